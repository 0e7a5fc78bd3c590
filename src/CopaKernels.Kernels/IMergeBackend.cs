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
/// Semantics (SPEC §1–§2) are identical on every backend: selection thresholds and masks bit for bit,
/// sums and products within fp32 rounding of the scalar references in <c>Reference/</c>.
/// Arguments are validated here, at the public entry; kernels assume valid input.
/// </summary>
public interface IMergeBackend : IDisposable
{
    /// <summary>Device kind.</summary>
    BackendKind Kind { get; }

    /// <summary>Human-readable description (device, SIMD width or memory, threads).</summary>
    string Name { get; }

    /// <summary>Allocates a zero-filled buffer of <paramref name="byteLength"/> bytes.</summary>
    KernelBuffer Allocate(long byteLength);

    /// <summary>Copies host bytes into a buffer at a byte offset.</summary>
    void Upload(ReadOnlySpan<byte> source, KernelBuffer destination, long byteOffset);

    /// <summary>Copies buffer bytes at a byte offset to the host.</summary>
    void Download(KernelBuffer source, long byteOffset, Span<byte> destination);

    /// <summary>Waits for all queued work (a no-op where calls are synchronous).</summary>
    void Synchronize();

    /// <summary>
    /// Family 1, one tensor: t = k-th smallest |x| with k = floor(n·(1−ρ)); when
    /// <paramref name="applyMask"/>, entries with |x| &lt; t are set to +0 in place.
    /// Throws <see cref="NonFiniteInputException"/> if the tensor holds NaN or ±Inf.
    /// </summary>
    SelectionResult SelectByMagnitude(KernelBuffer x, TensorRange range, double density, bool applyMask = true);

    /// <summary>Family 1, many tensors in one call (e.g. every LoRA factor of a model), each selected on its own.</summary>
    void SelectByMagnitudeBatched(KernelBuffer x, ReadOnlySpan<TensorRange> ranges, double density, Span<SelectionResult> results, bool applyMask = true);

    /// <summary>
    /// Family 2: for the rows × cols row-major matrix at <paramref name="offset"/>, sums[i] = Σ_j |x[i,j]|
    /// and, when <paramref name="maskedSums"/> is given, maskedSums[i] = Σ_j |x[i,j]|·[|x[i,j]| ≥ threshold]
    /// in the same pass. When <paramref name="applyMask"/> the entries below the threshold are also zeroed.
    /// </summary>
    void RowAbsSums(KernelBuffer x, long offset, int rows, int cols, KernelBuffer sums, long sumsOffset,
        float threshold = 0f, KernelBuffer? maskedSums = null, long maskedOffset = 0, bool applyMask = false);

    /// <summary>
    /// Families 3 and 4: rows of Σ_n B_n · diag(Factor_n · Scale_n) · A_n (inner dimension Σ r_n, one
    /// output write), for one row tile, with the optional add-base and convert epilogues.
    /// Every term must have <paramref name="dOut"/> rows in B and <paramref name="dIn"/> columns in A.
    /// </summary>
    void LowRankProduct(ReadOnlySpan<LowRankTerm> terms, long dOut, long dIn, in ProductTile tile);
}
