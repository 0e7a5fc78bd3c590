using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// Writes one merged weight (W + ΔW, or ΔW alone) in row tiles, so a weight of any size passes through
/// a bounded amount of memory: for a low-rank ΔW the backend computes each tile with the base tile
/// added and the output dtype rounded in its epilogue (family 3/4); a dense ΔW is added on the host.
/// Untouched tensors are copied byte for byte, or converted when the output dtype differs.
/// </summary>
internal sealed class TileWriter(IMergeBackend backend, WriteQueue queue, IMergeProgress? progress, CancellationToken ct)
{
    /// <summary>Chunk of an untouched tensor's copy.</summary>
    internal const int CopyChunkBytes = 4 << 20;

    /// <summary>
    /// Writes <paramref name="target"/> (rows × cols of the written orientation) as
    /// <c>[base +] Scale·B·A</c>, <paramref name="rowsPerTile"/> rows at a time.
    /// </summary>
    public void LowRank(TensorInfo target, PlannedModule m, LowRankResult r,
        SafetensorsFile? baseFile, TensorInfo? baseTensor, int rowsPerTile)
    {
        int rows = m.ProductRows, cols = m.ProductCols, rank = r.Rank;
        // ΔWᵀ = Aᵀ·Bᵀ: a transposed (fan_in_fan_out) weight is the same product with the factors' roles swapped.
        var left = m.Transposed ? Transpose(r.A, rank, m.DIn) : r.B;    // rows × rank
        var right = m.Transposed ? Transpose(r.B, m.DOut, rank) : r.A;  // rank × cols
        var outType = Storage(target.DType);
        var baseType = baseTensor is null ? StorageType.F32 : Storage(baseTensor.DType);
        int tile = Math.Min(rowsPerTile, rows);
        long tileElems = (long)tile * cols;

        using var bBuf = backend.Allocate(Math.Max(1, left.LongLength) * sizeof(float));
        using var aBuf = backend.Allocate(Math.Max(1, right.LongLength) * sizeof(float));
        backend.Upload(MemoryMarshal.AsBytes(left.AsSpan()), bBuf, 0);
        backend.Upload(MemoryMarshal.AsBytes(right.AsSpan()), aBuf, 0);
        using var outBuf = backend.Allocate(tileElems * outType.Size());
        using var baseBuf = baseTensor is null ? null : backend.Allocate(tileElems * baseType.Size());
        // Two host base tiles: the next tile is read from disk while the device computes the current
        // one (kernel launches return at once on device backends; Download is where the host waits).
        int inCap = baseTensor is null ? 0 : checked((int)(tileElems * baseType.Size()));
        byte[]?[] input = [inCap > 0 ? ArrayPool<byte>.Shared.Rent(inCap) : null, inCap > 0 ? ArrayPool<byte>.Shared.Rent(inCap) : null];
        try
        {
            LowRankTerm[] terms = [new LowRankTerm(bBuf, 0, aBuf, 0, rank, (float)r.Scale)];
            int ReadBase(int r0, byte[] into)
            {
                int bytes = checked(Math.Min(tile, rows - r0) * cols * baseType.Size());
                baseFile!.ReadBytes(baseTensor!, (long)r0 * cols * baseType.Size(), into.AsSpan(0, bytes));
                return bytes;
            }
            int pending = baseTensor is not null ? ReadBase(0, input[0]!) : 0;
            for (int r0 = 0, t = 0; r0 < rows; r0 += tile, t++)
            {
                ct.ThrowIfCancellationRequested();
                int n = Math.Min(tile, rows - r0);
                if (baseTensor is not null) backend.Upload(input[t % 2].AsSpan(0, pending), baseBuf!, 0);
                backend.LowRankProduct(terms, rows, cols,
                    new ProductTile(r0, n, outBuf, 0, outType, baseBuf, 0, baseType));
                if (baseTensor is not null && r0 + tile < rows) pending = ReadBase(r0 + tile, input[(t + 1) % 2]!);
                int length = checked(n * cols * outType.Size());
                var output = WriteQueue.Rent(length);
                backend.Download(outBuf, 0, output.AsSpan(0, length));
                queue.Append(target.Name, output, length);
                progress?.Advance(length, null);
            }
        }
        finally
        {
            foreach (var b in input) if (b != null) ArrayPool<byte>.Shared.Return(b);
        }
    }

    /// <summary>Writes <c>[base +] ΔW</c> for a dense ΔW (d_out × d_in, F32), in row tiles on the host.</summary>
    public void Dense(TensorInfo target, PlannedModule m, float[] delta,
        SafetensorsFile? baseFile, TensorInfo? baseTensor, int rowsPerTile)
    {
        int rows = m.ProductRows, cols = m.ProductCols;
        int tile = Math.Min(rowsPerTile, rows);
        int outSize = target.DType.Bits() / 8;
        var values = ArrayPool<float>.Shared.Rent(checked(tile * cols));
        var w = ArrayPool<float>.Shared.Rent(checked(tile * cols));
        var raw = ArrayPool<byte>.Shared.Rent(checked(tile * cols * sizeof(float)));
        try
        {
            for (int r0 = 0; r0 < rows; r0 += tile)
            {
                ct.ThrowIfCancellationRequested();
                int n = Math.Min(tile, rows - r0);
                var v = values.AsSpan(0, n * cols);
                if (m.Transposed)
                    for (int i = 0; i < n; i++)
                        for (int j = 0; j < cols; j++)
                            v[i * cols + j] = delta[(long)j * m.DIn + r0 + i];
                else
                    delta.AsSpan(checked(r0 * cols), n * cols).CopyTo(v);
                if (baseTensor is not null)
                {
                    int size = baseTensor.DType.Bits() / 8;
                    baseFile!.ReadBytes(baseTensor, (long)r0 * cols * size, raw.AsSpan(0, n * cols * size));
                    ElementCodec.Decode(baseTensor.DType, raw.AsSpan(0, n * cols * size), w.AsSpan(0, n * cols));
                    // W + ΔW in F32, rounded once on output (SPEC: results are rounded once).
                    TensorPrimitives.Add(w.AsSpan(0, n * cols), v, v);
                }
                int length = n * cols * outSize;
                var output = WriteQueue.Rent(length);
                ElementCodec.Encode(target.DType, v, output.AsSpan(0, length));
                queue.Append(target.Name, output, length);
                progress?.Advance(length, null);
            }
        }
        finally
        {
            ArrayPool<float>.Shared.Return(values);
            ArrayPool<float>.Shared.Return(w);
            ArrayPool<byte>.Shared.Return(raw);
        }
    }

    /// <summary>Writes F32 values converted (rounded to nearest-even) to <paramref name="target"/>'s dtype.</summary>
    public void Values(TensorInfo target, ReadOnlySpan<float> values)
    {
        int size = target.DType.Bits() / 8;
        int chunk = CopyChunkBytes / size;
        for (int done = 0; done < values.Length; done += chunk)
        {
            int n = Math.Min(chunk, values.Length - done);
            var output = WriteQueue.Rent((long)n * size);
            ElementCodec.Encode(target.DType, values.Slice(done, n), output.AsSpan(0, n * size));
            queue.Append(target.Name, output, n * size);
        }
    }

    /// <summary>Copies an untouched tensor byte for byte, or converts it when <paramref name="target"/>'s dtype differs.</summary>
    public void Copy(TensorInfo target, SafetensorsFile file, TensorInfo source)
    {
        if (target.DType == source.DType)
        {
            for (long done = 0; done < source.ByteLength; done += CopyChunkBytes)
            {
                ct.ThrowIfCancellationRequested();
                int n = (int)Math.Min(CopyChunkBytes, source.ByteLength - done);
                var buffer = WriteQueue.Rent(n);
                file.ReadBytes(source, done, buffer.AsSpan(0, n));
                queue.Append(target.Name, buffer, n);
                progress?.Advance(n, null);
            }
            return;
        }
        int inSize = source.DType.Bits() / 8, outSize = target.DType.Bits() / 8;
        int chunk = CopyChunkBytes / Math.Max(inSize, outSize);
        var raw = ArrayPool<byte>.Shared.Rent(chunk * inSize);
        var values = ArrayPool<float>.Shared.Rent(chunk);
        try
        {
            for (long done = 0; done < source.ElementCount; done += chunk)
            {
                ct.ThrowIfCancellationRequested();
                int n = (int)Math.Min(chunk, source.ElementCount - done);
                file.ReadBytes(source, done * inSize, raw.AsSpan(0, n * inSize));
                ElementCodec.Decode(source.DType, raw.AsSpan(0, n * inSize), values.AsSpan(0, n));
                var output = WriteQueue.Rent((long)n * outSize);
                ElementCodec.Encode(target.DType, values.AsSpan(0, n), output.AsSpan(0, n * outSize));
                queue.Append(target.Name, output, n * outSize);
                progress?.Advance((long)n * outSize, null);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(raw);
            ArrayPool<float>.Shared.Return(values);
        }
    }

    internal static StorageType Storage(DType d) => d switch
    {
        DType.F32 => StorageType.F32,
        DType.BF16 => StorageType.BF16,
        DType.F16 => StorageType.F16,
        _ => throw new ArgumentOutOfRangeException(nameof(d), d, "not a merge dtype"),
    };

    private static float[] Transpose(float[] x, int rows, int cols)
    {
        var t = new float[x.LongLength];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                t[(long)j * rows + i] = x[(long)i * cols + j];
        return t;
    }
}
