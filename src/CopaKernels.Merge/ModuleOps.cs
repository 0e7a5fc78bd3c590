using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Runtime.InteropServices;
using CopaKernels.Formats;
using CopaKernels.Kernels;

namespace CopaKernels.Merge;

/// <summary>The steps several methods share: factor-space weighting, dense task deltas, rank-Σr concatenation.</summary>
internal static class ModuleOps
{
    /// <summary>The one message for a non-finite input value (task is 0-based).</summary>
    public static CopaInputException NonFinite(string path, int task) =>
        new(null, path, $"adapter {task + 1} holds NaN or Inf in this module");

    /// <summary>Why factor-space merges need one rank.</summary>
    public const string FactorSpaceRanks = "factor space needs equal ranks (use space delta)";

    /// <summary>The common rank r; throws naming the module when the adapters' ranks differ.</summary>
    public static int RequireEqualRanks(ModuleInput m, string why)
    {
        int r = m.Tasks[0].Rank;
        foreach (var t in m.Tasks)
            if (t.Rank != r)
                throw new CopaInputException(null, m.Path,
                    $"ranks differ between adapters ({string.Join(", ", m.Tasks.Select(x => x.Rank))}); {why}");
        return r;
    }

    /// <summary>
    /// Factor space (SPEC §4): x^A_n = sign(w_n)·√|w_n·s_n|·A_n and x^B_n = √|w_n·s_n|·B_n, as fresh
    /// arrays (the coefficient computed in double, rounded once, one fp32 multiply per element).
    /// </summary>
    public static (List<float[]> A, List<float[]> B, int Rank) WeightedFactors(ModuleInput m, MergeOptions o)
    {
        int r = RequireEqualRanks(m, FactorSpaceRanks);
        var xa = new List<float[]>(m.Tasks.Count);
        var xb = new List<float[]>(m.Tasks.Count);
        for (int task = 0; task < m.Tasks.Count; task++)
        {
            float cb = (float)Math.Sqrt(Math.Abs(o.WeightOf(task) * m.Tasks[task].Scale));
            float ca = Math.Sign(o.WeightOf(task)) * cb;
            xa.Add(Scaled(m.Tasks[task].A, ca));
            xb.Add(Scaled(m.Tasks[task].B, cb));
        }
        return (xa, xb, r);
    }

    /// <summary>c·x as a new array.</summary>
    public static float[] Scaled(float[] x, float c)
    {
        var y = GC.AllocateUninitializedArray<float>(x.Length);
        TensorPrimitives.Multiply(x, c, y);
        return y;
    }

    /// <summary>ΔW_n = s_n·B_n·A_n on the backend (family 3, one term).</summary>
    public static float[] Delta(IMergeBackend backend, ModuleInput m, int task)
    {
        var t = m.Tasks[task];
        using var b = backend.Allocate(Math.Max(1, t.B.LongLength) * 4);
        using var a = backend.Allocate(Math.Max(1, t.A.LongLength) * 4);
        using var o = backend.Allocate(Math.Max(1, (long)m.DOut * m.DIn) * 4);
        backend.Upload(MemoryMarshal.AsBytes(t.B.AsSpan()), b, 0);
        backend.Upload(MemoryMarshal.AsBytes(t.A.AsSpan()), a, 0);
        LowRankTerm[] terms = [new LowRankTerm(b, 0, a, 0, t.Rank, (float)t.Scale)];
        backend.LowRankProduct(terms, m.DOut, m.DIn, new ProductTile(0, m.DOut, o));
        var result = GC.AllocateUninitializedArray<float>(checked(m.DOut * m.DIn));
        backend.Download(o, 0, MemoryMarshal.AsBytes(result.AsSpan()));
        return result;
    }

    /// <summary>
    /// The exact rank-Σr pair of Σ_n B_n·diag(c_n)·A_n: B = [B_1·diag(c_1) | …] (d_out × Σr),
    /// A = [A_1; …] (Σr × d_in), scale 1. <paramref name="coefficient"/>(n, j) is rounded once to fp32.
    /// </summary>
    public static LowRankResult Concatenate(ModuleInput m, IReadOnlyList<float[]> bs, IReadOnlyList<float[]> @as,
        Func<int, int, double> coefficient, ModuleStats stats)
    {
        int total = m.Tasks.Sum(t => t.Rank), dOut = m.DOut, dIn = m.DIn;
        // Every entry is written below, so skip the zeroing.
        var b = GC.AllocateUninitializedArray<float>(checked(dOut * total));
        var a = GC.AllocateUninitializedArray<float>(checked(total * dIn));
        int col = 0;
        for (int task = 0; task < m.Tasks.Count; task++)
        {
            int r = m.Tasks[task].Rank;
            var coef = new float[r];
            for (int j = 0; j < r; j++) coef[j] = (float)coefficient(task, j);
            ScaleColumnsInto(bs[task], coef, dOut, r, b, total, col);
            Array.Copy(@as[task], 0, a, (long)col * dIn, (long)r * dIn);
            col += r;
        }
        return new LowRankResult(b, a, total, 1.0, total) { Stats = stats };
    }

    /// <summary>
    /// dst[i, col + j] = x[i, j]·s[j] (or += with <paramref name="accumulate"/>: the product rounded
    /// before the add, no fused multiply-add) for the rows × r matrix x, into a matrix with row stride
    /// <paramref name="stride"/>.
    /// </summary>
    internal static void ScaleColumnsInto(float[] x, float[] s, int rows, int r, float[] dst, int stride, int col, bool accumulate = false)
    {
        int w = Vector256<float>.Count;
        if (Vector256.IsHardwareAccelerated && r % w == 0)
        {
            var sv = new Vector256<float>[r / w];
            for (int v = 0; v < sv.Length; v++) sv[v] = Vector256.Create(s, v * w);
            for (int i = 0; i < rows; i++)
                for (int v = 0; v < sv.Length; v++)
                {
                    int o = i * stride + col + v * w;
                    var p = Vector256.Create(x, i * r + v * w) * sv[v];
                    (accumulate ? p + Vector256.Create(dst, o) : p).CopyTo(dst, o);
                }
            return;
        }
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < r; j++)
            {
                float p = x[(long)i * r + j] * s[j];
                long o = (long)i * stride + col + j;
                dst[o] = accumulate ? p + dst[o] : p;
            }
    }
}
