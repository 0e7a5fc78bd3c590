using System.Runtime.Intrinsics;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// The SIMD CPU backend: TensorPrimitives where it has the primitive, hand-written Vector256/Vector512
/// loops where it does not, multi-threaded across tensors, row blocks or chunks. Results do not depend
/// on the thread count: selection is exact, and every sum or dot product has one fixed order.
/// </summary>
public sealed class CpuBackend : IMergeBackend, IHostMemory
{
    /// <summary>Creates the backend.</summary>
    /// <param name="threads">Worker threads; 0 means every core.</param>
    public CpuBackend(int threads = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(threads);
        Threads = threads == 0 ? Environment.ProcessorCount : threads;
        Parallel = new ParallelOptions { MaxDegreeOfParallelism = Threads };
    }

    /// <summary>Worker threads used by every kernel.</summary>
    public int Threads { get; }

    internal ParallelOptions Parallel { get; }

    /// <summary>The widest SIMD the kernels use: "Vector512 (AVX-512)", "Vector256 (AVX2)", "Vector128" or "scalar".</summary>
    public string SimdWidth => MachineSimdWidth;

    /// <summary>
    /// <see cref="SimdWidth"/> without a backend: it is the machine's, the same for every instance (the
    /// widths .NET accelerates here), so a device list can show it before any backend is created.
    /// </summary>
    public static string MachineSimdWidth =>
        Vector512.IsHardwareAccelerated ? "Vector512 (AVX-512)" :
        Vector256.IsHardwareAccelerated ? "Vector256 (AVX2)" :
        Vector128.IsHardwareAccelerated ? "Vector128" : "scalar";

    /// <inheritdoc/>
    public BackendKind Kind => BackendKind.Cpu;

    /// <inheritdoc/>
    public string Name => $"cpu: {SimdWidth}, {Threads} thread{(Threads == 1 ? "" : "s")}";

    /// <inheritdoc/>
    public IHostMemory HostMemory => this;

    /// <inheritdoc/>
    public KernelBuffer Allocate(long byteLength) => new CpuBuffer(this, byteLength);

    /// <summary>
    /// A buffer over <paramref name="array"/> itself, for callers whose tensors already live in managed
    /// arrays: no copy in or out, no clear. The array stays pinned until the buffer is disposed, and
    /// kernels that write the buffer write the array.
    /// </summary>
    public KernelBuffer Wrap(float[] array)
    {
        ArgumentNullException.ThrowIfNull(array);
        return new CpuBuffer(this, array);
    }

    /// <inheritdoc/>
    public unsafe void Upload(ReadOnlySpan<byte> source, KernelBuffer destination, long byteOffset)
    {
        BackendChecks.Transfer(this, destination, byteOffset, source.Length);
        source.CopyTo(new Span<byte>(Own(destination).Pointer + byteOffset, source.Length));
    }

    /// <inheritdoc/>
    public unsafe void Download(KernelBuffer source, long byteOffset, Span<byte> destination)
    {
        BackendChecks.Transfer(this, source, byteOffset, destination.Length);
        new ReadOnlySpan<byte>(Own(source).Pointer + byteOffset, destination.Length).CopyTo(destination);
    }

    /// <inheritdoc/>
    public void Synchronize() { }

    /// <inheritdoc/>
    /// <remarks>Plain native memory: the CPU backend's buffers are host memory already, nothing to lock.</remarks>
    public HostBuffer AllocateHost(long byteLength, bool pageLocked = true) => new(this, byteLength, null);

    /// <inheritdoc/>
    /// <remarks>Copies at once and returns a complete fence: the kernels run on the calling thread, so there is no queue to overlap with.</remarks>
    public unsafe TransferFence UploadAsync(HostBuffer source, long sourceByteOffset, KernelBuffer destination, long destinationByteOffset, long byteLength)
    {
        BackendChecks.HostTransfer(this, source, sourceByteOffset, destination, destinationByteOffset, byteLength);
        Buffer.MemoryCopy(source.Pointer + sourceByteOffset, Own(destination).Pointer + destinationByteOffset, byteLength, byteLength);
        return default;
    }

    /// <inheritdoc/>
    /// <remarks>Copies at once and returns a complete fence.</remarks>
    public unsafe TransferFence DownloadAsync(KernelBuffer source, long sourceByteOffset, HostBuffer destination, long destinationByteOffset, long byteLength)
    {
        BackendChecks.HostTransfer(this, destination, destinationByteOffset, source, sourceByteOffset, byteLength);
        Buffer.MemoryCopy(Own(source).Pointer + sourceByteOffset, destination.Pointer + destinationByteOffset, byteLength, byteLength);
        return default;
    }

    /// <inheritdoc/>
    public void Wait(TransferFence fence) => BackendChecks.Fence(this, fence);

    /// <inheritdoc/>
    public SelectionResult SelectByMagnitude(KernelBuffer x, TensorRange range, double density, bool applyMask = true)
    {
        BackendChecks.Selection(this, x, range, density);
        return MagnitudeSelection.Select(this, Own(x), range, density, applyMask);
    }

    /// <inheritdoc/>
    public void SelectByMagnitudeBatched(KernelBuffer x, ReadOnlySpan<TensorRange> ranges, double density, Span<SelectionResult> results, bool applyMask = true)
    {
        BackendChecks.Batched(this, x, ranges, density, results.Length);
        MagnitudeSelection.SelectBatched(this, Own(x), ranges, density, results, applyMask);
    }

    /// <inheritdoc/>
    public void RowAbsSums(MatrixView x, BufferView sums, RowThreshold? threshold = null)
    {
        BackendChecks.RowAbsSums(this, x, sums, threshold);
        var t = threshold.GetValueOrDefault();
        var masked = t.MaskedSums;
        Cpu.RowAbsSums.Run(this, Own(x.Buffer), x.Offset, x.Rows, x.Cols, Own(sums.Buffer), sums.Offset, t.Value,
            masked is { } m ? Own(m.Buffer) : null, masked?.Offset ?? 0, t.ZeroBelow);
    }

    /// <inheritdoc/>
    public void LowRankProduct(ReadOnlySpan<LowRankTerm> terms, long dOut, long dIn, in ProductTile tile)
    {
        BackendChecks.LowRankProduct(this, terms, dOut, dIn, tile);
        if (tile.BitExact) LowRankProductExact.Run(this, terms, dIn, tile);
        else Cpu.LowRankProduct.Run(this, terms, dOut, dIn, tile);
    }

    /// <inheritdoc/>
    public void Dispose() { }

    private CpuBuffer Own(KernelBuffer buffer)
    {
        BackendChecks.Own(this, buffer);
        return (CpuBuffer)buffer;
    }
}
