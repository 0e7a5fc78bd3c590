using System.Numerics.Tensors;
using CopaKernels.Formats;
using CopaKernels.Merge.Routes;

namespace CopaKernels.Merge.Methods;

/// <summary>
/// Parameter Competition Balancing (Du et al. 2024) exactly as SEMANTICS §4 states it, per tensor of N
/// tasks flattened to length d: clip each task to its [1e-4, 1−1e-4] magnitude quantiles, weigh
/// intra-task importance exp(N·mm(|x_c|)²) against inter-task agreement tanh(x ⊙ Σx), keep the top q
/// fraction per task, and take the β-weighted mean of the clipped values.
/// </summary>
/// <remarks>
/// Decisions where the semantics leave it open, written down: weights enter as x_n ← w_n·x_n before step 1
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
    public MethodParameters Parameters { get; } = new() { Lambda = 1.0, PcbRatio = 0.1, Space = true, Weights = true };

    /// <inheritdoc/>
    /// <remarks>In delta space <see cref="Merge"/> holds six d-length arrays besides the task deltas: Σx, the two running sums, |x̂|, p and the selection scratch.</remarks>
    public ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options) =>
        options.EffectiveSpace == MergeSpace.Delta ? ResultForm.DenseHolding(6) : ResultForm.LowRank(ResultForm.EqualRanks(path, tasks, FactorSpace.FactorSpaceRanks));

    /// <inheritdoc/>
    public ModuleResult MergeModule(MergeRoute route, ModuleInput m, MergeOptions o)
    {
        int n = m.Tasks.Count;
        if (o.EffectiveSpace == MergeSpace.Delta)
        {
            // x_n = w_n·ΔW_n, flattened.
            var deltas = new List<float[]>(n);
            for (int t = 0; t < n; t++)
            {
                var d = route.TaskDelta(m, t);
                TensorPrimitives.Multiply(d, (float)o.WeightOf(m, t), d);
                deltas.Add(d);
            }
            return new DenseResult(Merge(deltas, o.EffectivePcbRatio, (float)o.EffectiveLambda, m.Path, route.Parallel,
                MergeErrors.DeltaOverflow(m, o)));
        }
        var (xa, xb, r) = FactorSpace.WeightedFactors(m, o);
        var am = Merge(xa, o.EffectivePcbRatio, 1f, m.Path, route.Parallel, MergeErrors.WeightedOverflow(m, o, "lora_A"));
        var bm = Merge(xb, o.EffectivePcbRatio, (float)o.EffectiveLambda, m.Path, route.Parallel, MergeErrors.WeightedOverflow(m, o, "lora_B"));
        return new LowRankResult(bm, am, r, 1.0, r);
    }

    /// <summary>SEMANTICS §4 pcb steps 1–5 over N same-length tensors.</summary>
    /// <remarks>
    /// The order statistics (the clipping quantiles of |x_n| and the top-q cut of p_n) are exact selections,
    /// never sorts; exp and tanh stay MathF's scalar functions, as the definition reads (a vectorised
    /// approximation moved entries across the top-q cut against the double reference in the tests, and its
    /// last bits may differ between AVX2 and AVX-512 machines); the element-wise steps run in blocks over
    /// the threads. Tasks are processed one after another and folded into the running
    /// sums of step 5 (Σ_n β_n·x̂_n and Σ_n β_n, in task order), so only a few length-d arrays live at once
    /// whatever N is.
    /// </remarks>
    internal static float[] Merge(IReadOnlyList<float[]> xs, double q, float lambda, string path, ParallelOptions? parallel = null,
        Func<int, TaskInputException>? nonFinite = null)
    {
        parallel ??= new ParallelOptions();
        int n = xs.Count;
        int d = xs[0].Length;
        if (d == 0) return [];
        for (int t = 0; t < n; t++)
            if (!float.IsFinite(TensorPrimitives.MaxMagnitude(xs[t]))) throw nonFinite?.Invoke(t) ?? MergeErrors.NonFinite(path, t);
        var sumAll = new float[d];
        foreach (var x in xs) TensorPrimitives.Add(sumAll, x, sumAll);
        var numerator = new float[d];
        var betaSum = new float[d];
        var absC = GC.AllocateUninitializedArray<float>(d);
        var p = GC.AllocateUninitializedArray<float>(d);
        var scratch = GC.AllocateUninitializedArray<float>(d);
        for (int t = 0; t < n; t++)
        {
            var x = xs[t];
            // Step 1: clip |x| to two order statistics of |x|.
            float lo = MergeRoute.KthSmallestMagnitude(x, Math.Clamp((long)Math.Floor(d * 1e-4), 0, d - 1) + 1);
            float hi = MergeRoute.KthSmallestMagnitude(x, Math.Clamp((long)Math.Floor(d * (1 - 1e-4)) - 1, 0, d - 1) + 1);
            float top = Math.Max(lo, hi);
            HostLoops.ForBlocks(d, Block, parallel, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++) absC[i] = Math.Clamp(MathF.Abs(x[i]), lo, top);
            });
            // Steps 2–3: intra-task importance exp(N·mm²) times inter-task agreement tanh(x ⊙ Σx).
            MinMaxInto(absC, p);
            HostLoops.ForBlocks(d, Block, parallel, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++) p[i] = MathF.Exp(n * p[i] * p[i]) * MathF.Tanh(x[i] * sumAll[i]);
            });
            // Step 4: keep the top q fraction (by value), min-max scale.
            float tau = MergeRoute.KthSmallest(p, Math.Clamp((long)Math.Floor(d * (1 - q)), 0, d - 1) + 1, scratch);
            HostLoops.ForBlocks(d, Block, parallel, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++) if (p[i] < tau) p[i] = 0f;
            });
            MinMaxInto(p, p); // β_n
            // Step 5, folded: Σ_n x̂_n·β_n and Σ_n β_n, with x̂ = sign(x)·clipped |x| (0 where x = 0).
            HostLoops.ForBlocks(d, Block, parallel, (i0, i1) =>
            {
                for (int i = i0; i < i1; i++)
                {
                    float xc = MathF.CopySign(absC[i], x[i]) * (x[i] == 0 ? 0 : 1);
                    numerator[i] += xc * p[i];
                    betaSum[i] += p[i];
                }
            });
        }
        HostLoops.ForBlocks(d, Block, parallel, (i0, i1) =>
        {
            for (int i = i0; i < i1; i++) numerator[i] = lambda * numerator[i] / MathF.Max(betaSum[i], 1e-12f);
        });
        return numerator;
    }

    /// <summary>Elements per block of the element-wise steps.</summary>
    private const int Block = 1 << 15;

    /// <summary>dst = (v − min)/(max − min); zeros when max = min (SEMANTICS §4). dst may be v.</summary>
    private static void MinMaxInto(float[] v, float[] dst)
    {
        float min = TensorPrimitives.Min(v), max = TensorPrimitives.Max(v);
        if (!(max > min))
        {
            Array.Clear(dst);
            return;
        }
        float range = max - min;
        TensorPrimitives.Subtract(v, min, dst);
        TensorPrimitives.Divide(dst, range, dst);
    }
}
