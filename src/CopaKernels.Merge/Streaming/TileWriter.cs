using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using CopaKernels.Formats;
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
/// <param name="backend">Where the products run.</param>
/// <param name="queue">Takes the output bytes, in order.</param>
/// <param name="staging">Host buffers of the product tiles (<see cref="LowRank"/> only; null where it is not called).</param>
/// <param name="progress">Told of every byte queued.</param>
/// <param name="ct">Checked between tiles and chunks.</param>
internal sealed class TileWriter(IMergeBackend backend, WriteQueue queue, TileStaging? staging, IMergeProgress? progress, CancellationToken ct)
{
    /// <summary>Chunk of an untouched tensor's copy.</summary>
    internal const int CopyChunkBytes = 4 << 20;

    /// <summary>
    /// Writes <paramref name="target"/> (rows × cols of the written orientation) as
    /// <c>[base +] Scale·B·A</c>, <paramref name="rowsPerTile"/> rows at a time.
    /// </summary>
    /// <remarks>
    /// A two-stage pipeline between the host and the backend's queue. For tile t the upload of its base
    /// tile, the product and the download of the result are queued in order without waiting; while the device
    /// works through them, the host hands tile t−1's result (downloaded into a staging buffer) to the write
    /// queue and reads tile t+1's base bytes from disk into the other input buffer; then it waits for tile t's
    /// download. Fences: an input buffer is rewritten only after the download that follows its upload in the
    /// queue has completed (two iterations later), and a result buffer is read (written to disk) only after its
    /// download's fence. The device buffers are single: the queue is in order, so the next upload never runs
    /// before the current product is done. On a backend without a queue (CPU) every call completes at once and
    /// the same loop runs tile after tile.
    /// </remarks>
    public void LowRank(TensorInfo target, PlannedModule m, LowRankResult r,
        ITensorFile? baseFile, TensorInfo? baseTensor, int rowsPerTile)
    {
        var host = staging ?? throw new InvalidOperationException("TileWriter.LowRank needs tile staging");
        int rows = m.ProductRows, cols = m.ProductCols, rank = r.Rank;
        // ΔWᵀ = Aᵀ·Bᵀ: a transposed (fan_in_fan_out) weight is the same product with the factors' roles swapped.
        var left = m.Transposed ? Transpose(r.A, rank, m.DIn) : r.B;    // rows × rank
        var right = m.Transposed ? Transpose(r.B, m.DOut, rank) : r.A;  // rank × cols
        var outType = target.DType;
        var baseType = baseTensor is null ? DType.F32 : baseTensor.DType;
        int tile = Math.Min(rowsPerTile, rows);
        long tileElems = (long)tile * cols;

        using var bBuf = backend.Allocate(Math.Max(1, left.LongLength) * sizeof(float));
        using var aBuf = backend.Allocate(Math.Max(1, right.LongLength) * sizeof(float));
        backend.Upload(MemoryMarshal.AsBytes(left.AsSpan()), bBuf, 0);
        backend.Upload(MemoryMarshal.AsBytes(right.AsSpan()), aBuf, 0);
        using var outBuf = backend.Allocate(tileElems * outType.Size());
        using var baseBuf = baseTensor is null ? null : backend.Allocate(tileElems * baseType.Size());
        var input = baseTensor is null ? null : host.Inputs(tileElems * baseType.Size());
        host.EnsureOutput(tileElems * outType.Size(), ct);
        LowRankTerm[] terms = [new LowRankTerm(bBuf, 0, aBuf, 0, rank, (float)r.Scale)];
        // The product's non-finite flag: zeroed from word 0 of the host side before each tile, downloaded
        // into word 1 + t % 2 before the tile itself, so the tile's fence covers it.
        var (flag, flags) = host.Flags();
        int ReadBase(int r0, HostBuffer into)
        {
            int bytes = checked(Math.Min(tile, rows - r0) * cols * baseType.Size());
            baseFile!.ReadBytes(baseTensor!, (long)r0 * cols * baseType.Size(), into.Span<byte>(0, bytes));
            return bytes;
        }

        HostBuffer? current = null, ready = null;   // tile t's download target; tile t−1's result, not yet queued
        int readyLength = 0;
        try
        {
            int pending = input is null ? 0 : ReadBase(0, input[0]);
            for (int r0 = 0, t = 0; r0 < rows; r0 += tile, t++)
            {
                ct.ThrowIfCancellationRequested();
                int n = Math.Min(tile, rows - r0);
                int length = checked(n * cols * outType.Size());
                current = host.TakeOutput(ct);
                backend.UploadAsync(flags, 0, flag, 0, 4);
                if (input is not null) backend.UploadAsync(input[t % 2], 0, baseBuf!, 0, pending);
                backend.LowRankProduct(terms, rows, cols,
                    new ProductTile(r0, n, outBuf, 0, outType, baseBuf, 0, baseType, NonFiniteFlag: flag));
                backend.DownloadAsync(flag, 0, flags, 4 + 4 * (t % 2), 4);
                var downloaded = backend.DownloadAsync(outBuf, 0, current, 0, length);
                // While the device works on tile t: queue tile t−1 for writing, read tile t+1. Tile t+1's input
                // buffer last fed tile t−1's upload, which tile t−1's download fence (waited for last time) covers.
                Emit(target.Name, ref ready, readyLength);
                if (input is not null && r0 + tile < rows) pending = ReadBase(r0 + tile, input[(t + 1) % 2]);
                backend.Wait(downloaded);
                // Tile t's base is still in input[t % 2]: tile t + 1's went into the other buffer.
                if (flags.Span<uint>(1 + t % 2, 1)[0] != 0)
                    CheckTile(target, current.Span<byte>(0, length), baseTensor?.DType,
                        input is null ? default : input[t % 2].Span<byte>(0, n * cols * baseType.Size()), (long)r0 * cols);
                (ready, readyLength, current) = (current, length, null);
            }
            Emit(target.Name, ref ready, readyLength);
        }
        finally
        {
            // After a failure: buffers not handed to the queue go back to the ring (a queued download into
            // one completes before any later use of it, which is queued after it, or before it is freed).
            if (current != null) host.ReturnOutput(current);
            if (ready != null) host.ReturnOutput(ready);
        }
    }

    /// <summary>
    /// A tile whose product raised the non-finite flag: throws <see cref="NonFiniteResultException"/> at the
    /// first value that is not finite where its base value is (a base that holds NaN or Inf passes them
    /// on: the output holds nothing non-finite the input did not).
    /// </summary>
    private static void CheckTile(TensorInfo target, ReadOnlySpan<byte> output, DType? baseType, ReadOnlySpan<byte> baseBytes, long first)
    {
        int os = target.DType.Bits() / 8, bs = baseType is { } b ? b.Bits() / 8 : 0;
        for (long i = 0; ;)
        {
            long j = NonFinite.IndexOf(target.DType, output[(int)(i * os)..]);
            if (j < 0) return;
            i += j;
            if (baseType is not { } bt || !NonFinite.Any(bt, baseBytes.Slice((int)(i * bs), bs)))
                throw new NonFiniteResultException(target.Name, first + i, target.Shape[^1], target.DType.ToString());
            i++;
        }
    }

    /// <summary>Hands a downloaded result to the write queue (which gives it back to the ring once written).</summary>
    private void Emit(string tensor, ref HostBuffer? ready, int length)
    {
        if (ready is null) return;
        var buffer = ready;
        queue.Append(tensor, buffer, length, staging!.ReturnOutput);
        ready = null;
        progress?.Advance(length, null);
    }

    /// <summary>Writes <c>[base +] ΔW</c> for a dense ΔW (d_out × d_in, F32), in row tiles on the host.</summary>
    public void Dense(TensorInfo target, PlannedModule m, float[] delta,
        ITensorFile? baseFile, TensorInfo? baseTensor, int rowsPerTile)
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
                    // W + ΔW in F32, rounded once on output (SEMANTICS: results are rounded once).
                    TensorPrimitives.Add(w.AsSpan(0, n * cols), v, v);
                }
                int length = n * cols * outSize;
                var output = WriteQueue.Rent(length);
                if (!ElementCodec.EncodeChecked(target.DType, v, output.AsSpan(0, length)))
                    CheckTile(target, output.AsSpan(0, length), baseTensor is null ? null : DType.F32,
                        MemoryMarshal.AsBytes(w.AsSpan(0, n * cols)), (long)r0 * cols);
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
            if (!ElementCodec.EncodeChecked(target.DType, values.Slice(done, n), output.AsSpan(0, n * size)))
                CheckTile(target, output.AsSpan(0, n * size), null, default, done);
            queue.Append(target.Name, output, n * size);
        }
    }

    /// <summary>Copies an untouched tensor byte for byte, or converts it when <paramref name="target"/>'s dtype differs.</summary>
    public void Copy(TensorInfo target, ITensorFile file, TensorInfo source)
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
                // A converted copy (--out-dtype) can overflow too (F32 above 65504 into F16).
                if (!ElementCodec.EncodeChecked(target.DType, values.AsSpan(0, n), output.AsSpan(0, n * outSize)))
                    CheckTile(target, output.AsSpan(0, n * outSize), DType.F32, MemoryMarshal.AsBytes(values.AsSpan(0, n)), done);
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

    private static float[] Transpose(float[] x, int rows, int cols)
    {
        var t = new float[x.LongLength];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                t[(long)j * rows + i] = x[(long)i * cols + j];
        return t;
    }
}
