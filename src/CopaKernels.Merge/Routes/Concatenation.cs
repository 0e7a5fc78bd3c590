using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using static CopaKernels.Merge.Routes.HostLoops;

namespace CopaKernels.Merge.Routes;

/// <summary>The rank-Σr concatenation of N low-rank pairs (SEMANTICS §2, §4): exact, no dense matrix.</summary>
internal static class Concatenation
{
    /// <summary>
    /// The exact rank-Σr pair of Σ_n B_n·diag(c_n)·A_n: B = [B_1·diag(c_1) | …] (d_out × Σr),
    /// A = [A_1; …] (Σr × d_in), scale 1. <paramref name="coefficient"/>(n, j) is rounded once to fp32.
    /// </summary>
    /// <remarks>
    /// B is built row by row, each output row written once with every task's segment (one fp32
    /// multiply per entry), in row blocks over the threads: column by column, task after task, each
    /// task's pass would stream the whole d_out × Σr output through the cache again.
    /// </remarks>
    public static LowRankResult Concatenate(ModuleInput m, IReadOnlyList<float[]> bs, IReadOnlyList<float[]> @as,
        Func<int, int, double> coefficient, ModuleStats stats, ResultSink results, ParallelOptions parallel)
    {
        int n = m.Tasks.Count, dOut = m.DOut, dIn = m.DIn;
        var (coef, start) = ColumnCoefficients(m, coefficient);
        int total = start[n];
        // Every entry is written below, so skip the zeroing.
        var b = results.Floats(checked(dOut * total));
        var a = results.Floats(checked(total * dIn));
        int rowsPerChunk = Math.Max(1, SumChunk / Math.Max(1, total));
        ParallelFor((dOut + rowsPerChunk - 1) / rowsPerChunk + n, parallel, item =>
        {
            int chunks = (dOut + rowsPerChunk - 1) / rowsPerChunk;
            if (item >= chunks)
            {
                int task = item - chunks; // A: the tasks' trimmed A's one under the other
                Array.Copy(@as[task], 0, a, (long)start[task] * dIn, (long)m.Tasks[task].Rank * dIn);
                return;
            }
            for (int i = item * rowsPerChunk, end = Math.Min(dOut, i + rowsPerChunk); i < end; i++)
                for (int task = 0; task < n; task++)
                {
                    int r = start[task + 1] - start[task];
                    MultiplyShort(bs[task].AsSpan(i * r, r), coef.AsSpan(start[task], r), b.AsSpan(i * total + start[task], r));
                }
        });
        return new LowRankResult(b, a, total, 1.0, total) { Stats = stats };
    }

    /// <summary>One fp32 coefficient per inner index of the concatenation (coefficient(n, j) rounded once), and where each task's columns start.</summary>
    internal static (float[] Coef, int[] Start) ColumnCoefficients(ModuleInput m, Func<int, int, double> coefficient)
    {
        int n = m.Tasks.Count;
        var start = TaskStarts(m);
        var coef = new float[start[n]];
        for (int task = 0; task < n; task++)
            for (int j = 0; j < m.Tasks[task].Rank; j++) coef[start[task] + j] = (float)coefficient(task, j);
        return (coef, start);
    }

    /// <summary>Where each task's inner indices start in the rank-Σr concatenation (N + 1 entries, the last Σ r_n).</summary>
    internal static int[] TaskStarts(ModuleInput m)
    {
        var start = new int[m.Tasks.Count + 1];
        for (int task = 0; task < m.Tasks.Count; task++) start[task + 1] = start[task] + m.Tasks[task].Rank;
        return start;
    }

    /// <summary>
    /// dst = x ⊙ c for the short spans of one row of a low-rank factor (r entries): the same one fp32
    /// multiply per entry as <see cref="TensorPrimitives.Multiply(ReadOnlySpan{float}, ReadOnlySpan{float}, Span{float})"/>,
    /// without its per-call dispatch, which costs as much as the work at r = 16.
    /// </summary>
    private static void MultiplyShort(ReadOnlySpan<float> x, ReadOnlySpan<float> c, Span<float> dst)
    {
        int n = dst.Length, i = 0;
        ref float xr = ref MemoryMarshal.GetReference(x);
        ref float cr = ref MemoryMarshal.GetReference(c);
        ref float dr = ref MemoryMarshal.GetReference(dst);
        if (x.Length < n || c.Length < n) throw new ArgumentException("spans shorter than the destination");
        if (Vector512.IsHardwareAccelerated)
            for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
                (Vector512.LoadUnsafe(ref xr, (nuint)i) * Vector512.LoadUnsafe(ref cr, (nuint)i)).StoreUnsafe(ref dr, (nuint)i);
        if (Vector256.IsHardwareAccelerated)
            for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
                (Vector256.LoadUnsafe(ref xr, (nuint)i) * Vector256.LoadUnsafe(ref cr, (nuint)i)).StoreUnsafe(ref dr, (nuint)i);
        for (; i < n; i++) Unsafe.Add(ref dr, i) = Unsafe.Add(ref xr, i) * Unsafe.Add(ref cr, i);
    }
}
