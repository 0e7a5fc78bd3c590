using System.Runtime.Intrinsics;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// The SIMD CPU backend: TensorPrimitives where it has the primitive, hand-written Vector256/Vector512
/// loops where it does not, multi-threaded across tensors, row blocks or chunks. Results do not depend
/// on the thread count: selection is exact, and every sum or dot product has one fixed order.
/// </summary>
public sealed class CpuBackend : IMergeBackend
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

    /// <summary>The widest SIMD the kernels use here: "AVX-512", "AVX2" or "scalar".</summary>
    public static string SimdWidth =>
        Vector512.IsHardwareAccelerated ? "Vector512 (AVX-512)" :
        Vector256.IsHardwareAccelerated ? "Vector256 (AVX2)" :
        Vector128.IsHardwareAccelerated ? "Vector128" : "scalar";

    /// <inheritdoc/>
    public BackendKind Kind => BackendKind.Cpu;

    /// <inheritdoc/>
    public string Name => $"cpu: {SimdWidth}, {Threads} thread{(Threads == 1 ? "" : "s")}";

    /// <inheritdoc/>
    public KernelBuffer Allocate(long byteLength) => new CpuBuffer(this, byteLength);

    /// <inheritdoc/>
    public unsafe void Upload(ReadOnlySpan<byte> source, KernelBuffer destination, long byteOffset)
    {
        var b = Own(destination);
        CheckRange(b, byteOffset, source.Length);
        source.CopyTo(new Span<byte>(b.Pointer + byteOffset, source.Length));
    }

    /// <inheritdoc/>
    public unsafe void Download(KernelBuffer source, long byteOffset, Span<byte> destination)
    {
        var b = Own(source);
        CheckRange(b, byteOffset, destination.Length);
        new ReadOnlySpan<byte>(b.Pointer + byteOffset, destination.Length).CopyTo(destination);
    }

    /// <inheritdoc/>
    public void Synchronize() { }

    /// <inheritdoc/>
    public SelectionResult SelectByMagnitude(KernelBuffer x, TensorRange range, double density, bool applyMask = true)
    {
        SelectionResult.CheckDensity(density);
        var b = Own(x);
        CheckFloats(b, range.Offset, range.Length);
        return MagnitudeSelection.Select(this, b, range, density, applyMask);
    }

    /// <inheritdoc/>
    public void SelectByMagnitudeBatched(KernelBuffer x, ReadOnlySpan<TensorRange> ranges, double density, Span<SelectionResult> results, bool applyMask = true)
    {
        SelectionResult.CheckDensity(density);
        if (results.Length < ranges.Length) throw new ArgumentException("results is shorter than ranges", nameof(results));
        var b = Own(x);
        foreach (var r in ranges) CheckFloats(b, r.Offset, r.Length);
        MagnitudeSelection.SelectBatched(this, b, ranges, density, results, applyMask);
    }

    /// <inheritdoc/>
    public void RowAbsSums(KernelBuffer x, long offset, int rows, int cols, KernelBuffer sums, long sumsOffset,
        float threshold = 0f, KernelBuffer? maskedSums = null, long maskedOffset = 0, bool applyMask = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        var bx = Own(x);
        CheckFloats(bx, offset, (long)rows * cols);
        var bs = Own(sums);
        CheckFloats(bs, sumsOffset, rows);
        CpuBuffer? bm = null;
        if (maskedSums != null)
        {
            bm = Own(maskedSums);
            CheckFloats(bm, maskedOffset, rows);
        }
        Cpu.RowAbsSums.Run(this, bx, offset, rows, cols, bs, sumsOffset, threshold, bm, maskedOffset, applyMask);
    }

    /// <inheritdoc/>
    public void LowRankProduct(ReadOnlySpan<LowRankTerm> terms, long dOut, long dIn, in ProductTile tile)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(dOut);
        ArgumentOutOfRangeException.ThrowIfNegative(dIn);
        if (tile.RowStart < 0 || tile.RowCount < 0 || tile.RowStart + tile.RowCount > dOut)
            throw new ArgumentOutOfRangeException(nameof(tile), $"rows [{tile.RowStart}, {tile.RowStart + tile.RowCount}) outside d_out = {dOut}");
        foreach (var t in terms)
        {
            if (t.Rank < 0) throw new ArgumentOutOfRangeException(nameof(terms), "negative rank");
            CheckFloats(Own(t.B), t.BOffset, dOut * t.Rank);
            CheckFloats(Own(t.A), t.AOffset, t.Rank * dIn);
            if (t.Scale != null) CheckFloats(Own(t.Scale), t.ScaleOffset, t.Rank);
        }
        long tileElements = tile.RowCount * dIn;
        CheckRange(Own(tile.Output), tile.OutputOffset * tile.OutputType.Size(), tileElements * tile.OutputType.Size());
        if (tile.Base != null) CheckRange(Own(tile.Base), tile.BaseOffset * tile.BaseType.Size(), tileElements * tile.BaseType.Size());
        Cpu.LowRankProduct.Run(this, terms, dOut, dIn, tile);
    }

    /// <inheritdoc/>
    public void Dispose() { }

    private CpuBuffer Own(KernelBuffer buffer) =>
        buffer is CpuBuffer c && ReferenceEquals(c.Owner, this) ? c
            : throw new ArgumentException("buffer belongs to another backend", nameof(buffer));

    private static void CheckRange(CpuBuffer b, long byteOffset, long byteLength)
    {
        if (byteOffset < 0 || byteLength < 0 || byteOffset + byteLength > b.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(byteOffset), $"bytes [{byteOffset}, {byteOffset + byteLength}) outside a buffer of {b.ByteLength}");
    }

    private static void CheckFloats(CpuBuffer b, long offset, long length) => CheckRange(b, offset * 4, length * 4);
}
