using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Merge;

/// <summary>
/// The rank-Σr pair of <see cref="ModuleOps.Concatenate"/>, built in the output's own bytes from trimmed
/// factors in their stored 16-bit format, for adapter output in that format: each trimmed A is copied
/// into its rows of A as it comes off the trim (<see cref="Sink"/>), each trimmed B into its columns of
/// B; once S̃ is known, <see cref="Finish"/> scales B's columns in place. Nothing is widened to F32
/// outside a small per-thread block, and the writer gets bytes it writes as they are.
/// </summary>
/// <remarks>
/// The numbers are <see cref="ModuleOps.Concatenate"/>'s rounded once: an A entry is the trimmed value
/// itself (exact in its format), a B entry the fp32 product coefficient × value, rounded by the same
/// encoder the writer uses. The output buffers come from the write queue's pool and go to it.
/// </remarks>
internal sealed unsafe class EncodedConcatenation
{
    private readonly ModuleInput _m;
    private readonly Float16Format _format;
    private readonly int[] _start;
    private readonly int _total;
    private readonly byte[] _a, _b;

    public EncodedConcatenation(ModuleInput m, Float16Format format)
    {
        _m = m;
        _format = format;
        _start = new int[m.Tasks.Count + 1];
        for (int task = 0; task < m.Tasks.Count; task++) _start[task + 1] = _start[task] + m.Tasks[task].Rank;
        _total = _start[^1];
        _a = Streaming.WriteQueue.Rent(ALength);
        _b = Streaming.WriteQueue.Rent(BLength);
    }

    /// <summary>The output dtype: the factors' own.</summary>
    public DType DType => _format == Float16Format.BFloat16 ? DType.BF16 : DType.F16;

    private int ALength => checked(_total * _m.DIn * 2);

    private int BLength => checked(_m.DOut * _total * 2);

    /// <summary>Takes one trimmed factor (a <see cref="CopaScaling.RawSink"/>): A into its rows, B into its columns.</summary>
    public void Sink(int task, bool isB, ReadOnlySpan<ushort> trimmed)
    {
        if (!isB)
        {
            MemoryMarshal.AsBytes(trimmed).CopyTo(_a.AsSpan(_start[task] * _m.DIn * 2));
            return;
        }
        int r = _start[task + 1] - _start[task], rows = _m.DOut, stride = _total;
        if (trimmed.Length != rows * r) throw new ArgumentException($"B of task {task} holds {trimmed.Length} values, not {rows} × {r}");
        fixed (ushort* src = trimmed)
        fixed (byte* dstBytes = _b)
        {
            var dst = (ushort*)dstBytes + _start[task];
            for (int i = 0; i < rows; i++) CopyRow(src + (long)i * r, dst + (long)i * stride, r);
        }
    }

    /// <summary>Scales B's columns by coefficient(n, j) (rounded once to fp32) and hands back the encoded pair.</summary>
    public LowRankResult Finish(Func<int, int, double> coefficient, ModuleStats stats, ParallelOptions parallel)
    {
        var (coef, _) = ModuleOps.ColumnCoefficients(_m, coefficient);
        int rows = _m.DOut, total = _total;
        int rowsPerChunk = Math.Max(1, ModuleOps.SumChunk / Math.Max(1, total));
        ModuleOps.ParallelFor((rows + rowsPerChunk - 1) / rowsPerChunk, parallel, chunk =>
        {
            int i0 = chunk * rowsPerChunk, count = Math.Min(rows, i0 + rowsPerChunk) - i0;
            var bits = MemoryMarshal.Cast<byte, ushort>(_b.AsSpan(i0 * total * 2, count * total * 2));
            var values = Scratch(count * total);
            CopaScaling.Widen(bits, _format, values);
            for (int i = 0; i < count; i++)
            {
                var row = values.Slice(i * total, total);
                TensorPrimitives.Multiply(row, coef, row);
            }
            ElementCodec.Encode(DType, values, MemoryMarshal.AsBytes(bits));
        });
        return new LowRankResult([], [], total, 1.0, total)
        {
            Stats = stats,
            Encoded = new EncodedFactors(DType, _b, BLength, _a, ALength),
        };
    }

    [ThreadStatic] private static float[]? t_values;

    private static Span<float> Scratch(int length)
    {
        var s = t_values is { } v && v.Length >= length ? v : t_values = new float[Math.Max(length, ModuleOps.SumChunk)];
        return s.AsSpan(0, length);
    }

    /// <summary>Copies r 16-bit values (one row of a factor, r = 16 in the common case: one 32-byte move).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyRow(ushort* src, ushort* dst, int r)
    {
        int j = 0;
        for (; j <= r - 16; j += 16) Vector256.Store(Vector256.Load(src + j), dst + j);
        for (; j < r; j++) dst[j] = src[j];
    }
}
