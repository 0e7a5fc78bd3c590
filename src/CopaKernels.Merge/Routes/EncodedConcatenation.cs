using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels;

namespace CopaKernels.Merge.Routes;

/// <summary>
/// The rank-Σr pair of <see cref="Concatenation.Concatenate"/>, built in the output's own bytes from trimmed
/// factors in their stored 16-bit format, for adapter output in that format: each trimmed A is copied
/// into its rows of the output A as it comes off the trim (<see cref="Sink"/>); each trimmed B is kept,
/// in its format, in the first half of the module's own (unread) F32 array for it; once S̃ is known,
/// <see cref="Finish"/> writes the output B row block by row block, each block on one thread: every
/// task's columns scaled and rounded into it. Nothing is widened to F32 outside registers or a small
/// per-thread block, and the writer gets bytes it writes as they are.
/// </summary>
/// <remarks>
/// The numbers are <see cref="Concatenation.Concatenate"/>'s rounded once: an A entry is the trimmed value
/// itself (exact in its format), a B entry the fp32 product coefficient × value, rounded by the same
/// rounding the writer's encoder uses. Writing B by row blocks, not by task, keeps each output cache
/// line on one thread (a task's 16 columns are 32 bytes of a 256-byte row: written task by task from
/// two threads, the lines bounced between the cores). The output buffers come from the write queue's
/// pool and go to it.
/// </remarks>
internal sealed unsafe class EncodedConcatenation
{
    private readonly ModuleInput _m;
    private readonly DType _format;
    private readonly int[] _start;
    private readonly int _total;
    private readonly byte[] _a, _b;

    public EncodedConcatenation(ModuleInput m, DType format)
    {
        _m = m;
        _format = format;
        _start = Concatenation.TaskStarts(m);
        _total = _start[^1];
        _a = ResultSink.Bytes(ALength);
        _b = ResultSink.Bytes(BLength);
    }

    /// <summary>The output dtype: the factors' own.</summary>
    public DType DType => _format;

    private int ALength => checked(_total * _m.DIn * 2);

    private int BLength => checked(_m.DOut * _total * 2);

    /// <summary>Takes one factor (a <see cref="KeepTrimmed16"/>), trimmed as it is copied: A into its rows of the output, B kept for <see cref="Finish"/>.</summary>
    public void Sink(int task, bool isB, ReadOnlySpan<ushort> values, float threshold)
    {
        var into = isB ? KeptB(task) : MemoryMarshal.Cast<byte, ushort>(_a.AsSpan(_start[task] * _m.DIn * 2, values.Length * 2));
        HostKernels.MaskByMagnitude(values, into, _format, threshold);
    }

    /// <summary>Task <paramref name="task"/>'s trimmed B (d_out × r), kept in its own F32 array's first half.</summary>
    private Span<ushort> KeptB(int task) => Factors.FactorSet.Bits16Of(_m.Tasks[task].B, _m.DOut * _m.Tasks[task].Rank);

    /// <summary>Writes B, coefficient(n, j) (rounded once to fp32) times each task's columns, and hands back the encoded pair.</summary>
    public LowRankResult Finish(Func<int, int, double> coefficient, ModuleStats stats, ParallelOptions parallel)
    {
        var (coef, _) = Concatenation.ColumnCoefficients(_m, coefficient);
        int rows = _m.DOut, total = _total, n = _m.Tasks.Count;
        int rowsPerChunk = Math.Max(1, HostLoops.SumChunk / Math.Max(1, total));
        bool fused = _format == DType.BF16 && Vector512.IsHardwareAccelerated && _m.Tasks.All(t => t.Rank % 16 == 0);
        HostLoops.ParallelFor((rows + rowsPerChunk - 1) / rowsPerChunk, parallel, chunk =>
        {
            int i0 = chunk * rowsPerChunk, count = Math.Min(rows, i0 + rowsPerChunk) - i0;
            var output = MemoryMarshal.Cast<byte, ushort>(_b.AsSpan(i0 * total * 2, count * total * 2));
            if (fused)
            {
                bool finite = true;
                fixed (ushort* dst = output)
                fixed (float* c = coef)
                    for (int task = 0; task < n; task++)
                    {
                        int r = _start[task + 1] - _start[task];
                        fixed (ushort* src = KeptB(task))
                            finite &= ScaleBf16(src + (long)i0 * r, r, c + _start[task], dst + _start[task], total, count);
                    }
                if (!finite) throw NonFiniteB(i0, output);
                return;
            }
            // Any format: the block widened into a scratch, scaled row by row, encoded back.
            var values = ThreadScratch.Get(ref t_values, count * total, HostLoops.SumChunk);
            var widened = ThreadScratch.Get(ref t_widened, count * total, HostLoops.SumChunk);
            for (int task = 0; task < n; task++)
            {
                int r = _start[task + 1] - _start[task];
                ElementCodec.Widen(KeptB(task).Slice(i0 * r, count * r), _format, widened[..(count * r)]);
                for (int i = 0; i < count; i++)
                    TensorPrimitives.Multiply(widened.Slice(i * r, r), coef.AsSpan(_start[task], r), values.Slice(i * total + _start[task], r));
            }
            if (!ElementCodec.EncodeChecked(DType, values, MemoryMarshal.AsBytes(output))) throw NonFiniteB(i0, output);
        });
        return new LowRankResult([], [], total, 1.0, total)
        {
            Stats = stats,
            Encoded = new EncodedFactors(DType, _b, BLength, _a, ALength),
        };
    }

    /// <summary>The output B's rows from <paramref name="i0"/> hold a NaN or ±Inf (an overflow of the coefficients: the trimmed inputs are finite).</summary>
    private NonFiniteResultException NonFiniteB(int i0, ReadOnlySpan<ushort> block) =>
        new(Formats.Peft.LoraAdapter.KeyB(_m.Path), (long)i0 * _total + NonFinite.IndexOf(DType, MemoryMarshal.AsBytes(block)), _total, DType.ToString());

    /// <summary>
    /// dst[i·stride + j] = bf16(widen(src[i·r + j]) · c[j]) for <paramref name="rows"/> rows, r a multiple
    /// of 16: widened, multiplied and rounded sixteen at a time in registers. Returns whether every value
    /// written is finite (a running maximum of the rounded bits with the sign cleared, in a register).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool ScaleBf16(ushort* src, int r, float* c, ushort* dst, int stride, int rows)
    {
        var max = Vector256<ushort>.Zero;
        var magnitude = Vector256.Create(NonFinite.Half16Magnitude);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < r; j += 16)
            {
                var v = FloatConversion.Bf16ToSingle(Vector256.Load(src + (long)i * r + j)) * Vector512.Load(c + j);
                var bits = FloatConversion.SingleToBf16(v);
                bits.Store(dst + (long)i * stride + j);
                max = Vector256.Max(max, bits & magnitude);
            }
        return !Vector256.GreaterThanOrEqualAny(max, Vector256.Create(NonFinite.Bf16Infinity));
    }

    [ThreadStatic] private static float[]? t_values, t_widened;
}
