namespace CopaKernels.Kernels;

/// <summary>Which kind of device a backend runs on.</summary>
public enum BackendKind
{
    /// <summary>The SIMD CPU backend (TensorPrimitives, Vector256/Vector512, multi-threaded).</summary>
    Cpu,
    /// <summary>ILGPU on an NVIDIA GPU.</summary>
    Cuda,
    /// <summary>ILGPU on an OpenCL device.</summary>
    OpenCL,
    /// <summary>ILGPU's CPU emulator (tests only).</summary>
    IlgpuCpu,
}

/// <summary>
/// The merge kernels, backend-neutral: everything a merge method needs, and nothing about files.
/// Semantics (SEMANTICS §1–§2) are identical on every backend: selection thresholds and masks bit for bit,
/// sums and products within fp32 rounding of the scalar references in <c>Reference/</c>.
/// Arguments are validated here, at the public entry; kernels assume valid input.
/// </summary>
public interface IMergeBackend : IDisposable
{
    /// <summary>Device kind.</summary>
    BackendKind Kind { get; }

    /// <summary>Human-readable description (device, SIMD width or memory, threads).</summary>
    string Name { get; }

    /// <summary>
    /// The backend itself when its buffers are host memory (the CPU backend), so a caller can run its kernels
    /// on arrays in place; null for a device, whose buffers must be uploaded and downloaded.
    /// </summary>
    IHostMemory? HostMemory => null;

    /// <summary>
    /// Allocates a zero-filled buffer of <paramref name="byteLength"/> bytes. The transfers count bytes (a buffer
    /// may hold F32, BF16 or F16); the kernels address F32 elements. <see cref="KernelTransfers"/> has the
    /// element-typed forms (<c>Allocate&lt;float&gt;(n)</c>, <c>Upload(ReadOnlySpan&lt;float&gt;, …)</c>).
    /// </summary>
    KernelBuffer Allocate(long byteLength);

    /// <summary>
    /// Copies host bytes into a buffer at a byte offset, after all queued work, and returns when the copy is
    /// done (the source span may be reused at once). See <see cref="UploadAsync"/> for a copy that does not wait.
    /// </summary>
    void Upload(ReadOnlySpan<byte> source, KernelBuffer destination, long byteOffset);

    /// <summary>
    /// Copies buffer bytes at a byte offset to the host, after all queued work (so it sees every kernel queued
    /// before it), and returns when the bytes are there. See <see cref="DownloadAsync"/> for a copy that does not wait.
    /// </summary>
    void Download(KernelBuffer source, long byteOffset, Span<byte> destination);

    /// <summary>Waits for all queued work (a no-op where calls are synchronous); every fence is complete afterwards.</summary>
    void Synchronize();

    /// <summary>
    /// Allocates <paramref name="byteLength"/> bytes of host memory for the queued transfers (contents not
    /// cleared). With <paramref name="pageLocked"/> the backend page-locks it where the device supports it
    /// (CUDA: the copies become DMA that overlaps host work); elsewhere, or without it, it is plain native memory
    /// (<see cref="HostBuffer.PageLocked"/> says which). Lock only buffers that serve many transfers.
    /// Dispose host buffers before their backend.
    /// </summary>
    HostBuffer AllocateHost(long byteLength, bool pageLocked = true);

    /// <summary>
    /// Queues a copy of host bytes [<paramref name="sourceByteOffset"/>, + <paramref name="byteLength"/>) into
    /// <paramref name="destination"/> at <paramref name="destinationByteOffset"/>, after all work queued before it,
    /// and returns without waiting where the backend has a queue (the CPU backend copies at once). Ordering:
    /// work queued after it (kernels, transfers, the blocking calls) sees the copied bytes; no wait is needed
    /// for that. Fence: the host must not write the source range until <see cref="Wait"/> has returned for the
    /// returned fence (or a later one, or <see cref="Synchronize"/>).
    /// </summary>
    TransferFence UploadAsync(HostBuffer source, long sourceByteOffset, KernelBuffer destination, long destinationByteOffset, long byteLength);

    /// <summary>
    /// Queues a copy of buffer bytes [<paramref name="sourceByteOffset"/>, + <paramref name="byteLength"/>) into
    /// host memory at <paramref name="destinationByteOffset"/>, after all work queued before it (so it sees every
    /// kernel queued before it), and returns without waiting where the backend has a queue. Fence: the host must
    /// neither read nor write the destination range until <see cref="Wait"/> has returned for the returned fence
    /// (or a later one, or <see cref="Synchronize"/>); then it holds the bytes.
    /// </summary>
    TransferFence DownloadAsync(KernelBuffer source, long sourceByteOffset, HostBuffer destination, long destinationByteOffset, long byteLength);

    /// <summary>
    /// Blocks until the transfer that returned <paramref name="fence"/> and all work queued before it are
    /// complete. It may also wait for work queued after it (ILGPU 1.5.3 has no usable event for one point of a
    /// stream: its profiling markers need a profiling context and block when added on OpenCL, so the ILGPU
    /// backend waits for the whole stream): queue the next work after
    /// the host work it should overlap, not before the wait. Returns at once for a complete fence.
    /// </summary>
    void Wait(TransferFence fence);

    /// <summary>
    /// Family 1, one tensor: t = k-th smallest |x| with k = floor(n·(1−ρ)); when
    /// <paramref name="applyMask"/>, entries with |x| &lt; t are set to +0 in place.
    /// Throws <see cref="NonFiniteInputException"/> if the tensor holds NaN or ±Inf.
    /// </summary>
    SelectionResult SelectByMagnitude(KernelBuffer x, TensorRange range, double density, bool applyMask = true);

    /// <summary>Family 1, many tensors in one call (e.g. every LoRA factor of a model), each selected on its own.</summary>
    void SelectByMagnitudeBatched(KernelBuffer x, ReadOnlySpan<TensorRange> ranges, double density, Span<SelectionResult> results, bool applyMask = true);

    /// <summary>
    /// Family 2: for the row-major matrix <paramref name="x"/>, sums[i] = Σ_j |x[i,j]| (one F32 per row at
    /// <paramref name="sums"/>). With a <paramref name="threshold"/>, in the same pass:
    /// maskedSums[i] = Σ_j |x[i,j]|·[|x[i,j]| ≥ t] where <see cref="RowThreshold.MaskedSums"/> is given, and
    /// the entries below t are zeroed where <see cref="RowThreshold.ZeroBelow"/> is set.
    /// </summary>
    void RowAbsSums(MatrixView x, BufferView sums, RowThreshold? threshold = null);

    /// <summary>
    /// Families 3 and 4: rows of Σ_n B_n · diag(Factor_n · Scale_n) · A_n (inner dimension Σ r_n, one
    /// output write), for one row tile, with the optional add-base and convert epilogues.
    /// Every term must have <paramref name="dOut"/> rows in B and <paramref name="dIn"/> columns in A.
    /// </summary>
    void LowRankProduct(ReadOnlySpan<LowRankTerm> terms, long dOut, long dIn, in ProductTile tile);
}
