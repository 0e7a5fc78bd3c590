using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Kernels;

/// <summary>
/// The argument checks of <see cref="IMergeBackend"/>, shared by every backend so that each one throws the
/// same exception types with the same messages for the same bad call. Kernels assume these have passed.
/// </summary>
internal static class BackendChecks
{
    /// <summary>Throws unless <paramref name="buffer"/> was allocated by <paramref name="backend"/>.</summary>
    public static void Own(IMergeBackend backend, KernelBuffer buffer)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (!ReferenceEquals(buffer.Owner, backend))
            throw new ArgumentException("buffer belongs to another backend", nameof(buffer));
    }

    /// <summary>Throws unless bytes [offset, offset + length) lie inside the buffer.</summary>
    public static void Range(KernelBuffer b, long byteOffset, long byteLength)
    {
        if (byteOffset < 0 || byteLength < 0 || byteOffset + byteLength > b.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(byteOffset), $"bytes [{byteOffset}, {byteOffset + byteLength}) outside a buffer of {b.ByteLength}");
    }

    /// <summary>Throws unless F32 elements [offset, offset + length) lie inside the buffer.</summary>
    public static void Floats(KernelBuffer b, long offset, long length) => Range(b, offset * 4, length * 4);

    /// <summary>Checks an upload or download.</summary>
    public static void Transfer(IMergeBackend backend, KernelBuffer buffer, long byteOffset, long length)
    {
        Own(backend, buffer);
        Range(buffer, byteOffset, length);
    }

    /// <summary>Checks a queued transfer: both buffers the backend's, both ranges inside them.</summary>
    public static void HostTransfer(IMergeBackend backend, HostBuffer host, long hostOffset, KernelBuffer buffer, long bufferOffset, long length)
    {
        ArgumentNullException.ThrowIfNull(host);
        if (!ReferenceEquals(host.Owner, backend))
            throw new ArgumentException("host buffer belongs to another backend", nameof(host));
        if (hostOffset < 0 || length < 0 || hostOffset + length > host.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(hostOffset), $"bytes [{hostOffset}, {hostOffset + length}) outside a host buffer of {host.ByteLength}");
        Own(backend, buffer);
        Range(buffer, bufferOffset, length);
    }

    /// <summary>Throws unless <paramref name="fence"/> is complete or belongs to <paramref name="backend"/>.</summary>
    public static void Fence(IMergeBackend backend, TransferFence fence)
    {
        if (fence.Owner != null && !ReferenceEquals(fence.Owner, backend))
            throw new ArgumentException("fence belongs to another backend", nameof(fence));
    }

    /// <summary>Checks <see cref="IMergeBackend.SelectByMagnitude"/>.</summary>
    public static void Selection(IMergeBackend backend, KernelBuffer x, TensorRange range, double density)
    {
        SelectionResult.CheckDensity(density);
        Own(backend, x);
        Floats(x, range.Offset, range.Length);
    }

    /// <summary>Checks <see cref="IMergeBackend.SelectByMagnitudeBatched"/>.</summary>
    public static void Batched(IMergeBackend backend, KernelBuffer x, ReadOnlySpan<TensorRange> ranges, double density, int resultsLength)
    {
        SelectionResult.CheckDensity(density);
        if (resultsLength < ranges.Length) throw new ArgumentException("results is shorter than ranges", "results");
        Own(backend, x);
        foreach (var r in ranges) Floats(x, r.Offset, r.Length);
    }

    /// <summary>Checks <see cref="IMergeBackend.RowAbsSums"/>.</summary>
    public static void RowAbsSums(IMergeBackend backend, MatrixView x, BufferView sums, RowThreshold? threshold)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(x.Rows, "x.Rows");
        ArgumentOutOfRangeException.ThrowIfNegative(x.Cols, "x.Cols");
        Own(backend, x.Buffer);
        Floats(x.Buffer, x.Offset, x.Length);
        Own(backend, sums.Buffer);
        Floats(sums.Buffer, sums.Offset, x.Rows);
        if (threshold?.MaskedSums is { } masked)
        {
            Own(backend, masked.Buffer);
            Floats(masked.Buffer, masked.Offset, x.Rows);
        }
    }

    /// <summary>Checks <see cref="IMergeBackend.LowRankProduct"/>.</summary>
    public static void LowRankProduct(IMergeBackend backend, ReadOnlySpan<LowRankTerm> terms, long dOut, long dIn, in ProductTile tile)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(dOut);
        ArgumentOutOfRangeException.ThrowIfNegative(dIn);
        if (tile.RowStart < 0 || tile.RowCount < 0 || tile.RowStart + tile.RowCount > dOut)
            throw new ArgumentOutOfRangeException(nameof(tile), $"rows [{tile.RowStart}, {tile.RowStart + tile.RowCount}) outside d_out = {dOut}");
        if (!tile.OutputType.IsMergeFloat() || (tile.Base != null && !tile.BaseType.IsMergeFloat()))
            throw new ArgumentOutOfRangeException(nameof(tile), $"output {tile.OutputType}, base {tile.BaseType}: the product reads and writes F32, BF16 or F16");
        foreach (var t in terms)
        {
            if (t.Rank < 0) throw new ArgumentOutOfRangeException(nameof(terms), "negative rank");
            Own(backend, t.B);
            Floats(t.B, t.BOffset, dOut * t.Rank);
            Own(backend, t.A);
            Floats(t.A, t.AOffset, t.Rank * dIn);
            if (t.Scale != null)
            {
                Own(backend, t.Scale);
                Floats(t.Scale, t.ScaleOffset, t.Rank);
            }
        }
        if (tile.BitExact && (tile.Base != null || tile.OutputType != DType.F32))
            throw new ArgumentException("a bit-exact product writes F32 without a base tile", nameof(tile));
        long tileElements = tile.RowCount * dIn;
        Own(backend, tile.Output);
        Range(tile.Output, tile.OutputOffset * tile.OutputType.Size(), tileElements * tile.OutputType.Size());
        if (tile.Base != null)
        {
            Own(backend, tile.Base);
            Range(tile.Base, tile.BaseOffset * tile.BaseType.Size(), tileElements * tile.BaseType.Size());
        }
        if (tile.NonFiniteFlag != null)
        {
            Own(backend, tile.NonFiniteFlag);
            if (tile.NonFiniteFlagOffset % 4 != 0) throw new ArgumentException("the non-finite flag must be 4-byte aligned", nameof(tile));
            Range(tile.NonFiniteFlag, tile.NonFiniteFlagOffset, 4);
        }
    }
}
