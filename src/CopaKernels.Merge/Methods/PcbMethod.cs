using CopaKernels.Formats;
using CopaKernels.Kernels;

namespace CopaKernels.Merge.Methods;

/// <summary>
/// Parameter Competition Balancing (Du et al. 2024) exactly as SPEC §4 states it, per tensor of N
/// tasks flattened to length d: clip each task to its [1e-4, 1−1e-4] magnitude quantiles, weigh
/// intra-task importance exp(N·mm(|x_c|)²) against inter-task agreement tanh(x ⊙ Σx), keep the top q
/// fraction per task, and take the β-weighted mean of the clipped values.
/// </summary>
/// <remarks>
/// Decisions where the SPEC is silent, written down: weights enter as x_n ← w_n·x_n before step 1
/// (factor space folds them as the other baselines do); quantile indices are clamped into [0, d−1]
/// (the upper index floor(d·(1−1e-4))−1 is −1 for d = 1); step 4 zeroes the entries of
/// p_n = intra_n ⊙ inter_n below the value at ascending position floor(d·(1−q)) and min-max scales
/// the result; all arithmetic is fp32 (MathF), as on the GPU backends.
/// </remarks>
public sealed class PcbMethod : IMergeMethod
{
    /// <inheritdoc/>
    public string Name => "pcb";

    /// <inheritdoc/>
    public string Description => "Parameter Competition Balancing: intra/inter-task balancing, top-q weights (Du et al. 2024)";

    /// <inheritdoc/>
    public ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options) =>
        options.Space == MergeSpace.Delta ? ResultForm.Dense : ResultForm.LowRank(ResultForm.EqualRanks(path, tasks, ModuleOps.FactorSpaceRanks));

    /// <inheritdoc/>
    public ModuleResult MergeModule(IMergeBackend backend, ModuleInput m, MergeOptions o)
    {
        int n = m.Tasks.Count;
        if (o.Space == MergeSpace.Delta)
        {
            var deltas = new List<float[]>(n);
            for (int t = 0; t < n; t++)
            {
                var d = ModuleOps.Delta(backend, m, t);
                System.Numerics.Tensors.TensorPrimitives.Multiply(d, (float)o.WeightOf(t), d);
                deltas.Add(d);
            }
            return new DenseResult(Merge(deltas, o.EffectivePcbRatio, (float)o.EffectiveLambda, m.Path));
        }
        var (xa, xb, r) = ModuleOps.WeightedFactors(m, o);
        var am = Merge(xa, o.EffectivePcbRatio, 1f, m.Path);
        var bm = Merge(xb, o.EffectivePcbRatio, (float)o.EffectiveLambda, m.Path);
        return new LowRankResult(bm, am, r, 1.0, r);
    }

    /// <summary>SPEC §4 pcb steps 1–5 over N same-length tensors.</summary>
    internal static float[] Merge(IReadOnlyList<float[]> xs, double q, float lambda, string path)
    {
        int n = xs.Count;
        int d = xs[0].Length;
        var result = new float[d];
        if (d == 0) return result;
        var sumAll = new float[d];
        for (int t = 0; t < n; t++)
        {
            var x = xs[t];
            for (int i = 0; i < d; i++)
            {
                if (!float.IsFinite(x[i])) throw ModuleOps.NonFinite(path, t);
                sumAll[i] += x[i];
            }
        }
        var clipped = new float[n][];
        var beta = new float[n][];
        var betaSum = new float[d];
        for (int t = 0; t < n; t++)
        {
            var x = xs[t];
            // Step 1: clip |x| to two order statistics of |x|.
            var mags = new float[d];
            for (int i = 0; i < d; i++) mags[i] = MathF.Abs(x[i]);
            var sorted = (float[])mags.Clone();
            Array.Sort(sorted);
            float lo = sorted[Math.Clamp((int)Math.Floor(d * 1e-4), 0, d - 1)];
            float hi = sorted[Math.Clamp((int)Math.Floor(d * (1 - 1e-4)) - 1, 0, d - 1)];
            var xc = new float[d];
            var absC = new float[d];
            for (int i = 0; i < d; i++)
            {
                absC[i] = Math.Clamp(mags[i], lo, Math.Max(lo, hi));
                xc[i] = MathF.CopySign(absC[i], x[i]) * (x[i] == 0 ? 0 : 1);
            }
            clipped[t] = xc;
            // Steps 2–3: intra-task importance times inter-task agreement.
            var mm = MinMax(absC);
            var p = new float[d];
            for (int i = 0; i < d; i++)
                p[i] = MathF.Exp(n * mm[i] * mm[i]) * MathF.Tanh(x[i] * sumAll[i]);
            // Step 4: keep the top q fraction (by value), min-max scale.
            var ps = (float[])p.Clone();
            Array.Sort(ps);
            float tau = ps[Math.Clamp((int)Math.Floor(d * (1 - q)), 0, d - 1)];
            for (int i = 0; i < d; i++) if (p[i] < tau) p[i] = 0f;
            beta[t] = MinMax(p);
            for (int i = 0; i < d; i++) betaSum[i] += beta[t][i];
        }
        // Step 5.
        for (int i = 0; i < d; i++)
        {
            float acc = 0;
            for (int t = 0; t < n; t++) acc += clipped[t][i] * beta[t][i];
            result[i] = lambda * acc / MathF.Max(betaSum[i], 1e-12f);
        }
        return result;
    }

    /// <summary>(v − min)/(max − min); zeros when max = min (SPEC).</summary>
    private static float[] MinMax(float[] v)
    {
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        foreach (var x in v) { min = MathF.Min(min, x); max = MathF.Max(max, x); }
        var r = new float[v.Length];
        if (!(max > min)) return r;
        float range = max - min;
        for (int i = 0; i < v.Length; i++) r[i] = (v[i] - min) / range;
        return r;
    }
}
