using System.Runtime.Intrinsics;
using CopaKernels.Formats;
using CopaKernels.Kernels;
using CopaKernels.Merge.Routes;

namespace CopaKernels.Merge.Methods;

/// <summary>How each task's tensor is sparsified before combining.</summary>
public enum Sparsifier
{
    /// <summary>Kept whole.</summary>
    None,
    /// <summary>Magnitude trim to density ρ (SEMANTICS §1, exact, on the backend).</summary>
    Trim,
    /// <summary>DARE: each entry kept with probability ρ (counter-based stream), kept ones divided by ρ.</summary>
    Drop,
}

/// <summary>
/// Task arithmetic and its sparsified relatives as one configurable method (sparsifier × sign
/// consensus × λ), as mergekit structures them: task-arithmetic, ties, dare, dare-ties,
/// magnitude-prune (SEMANTICS §4), in factor space or delta space.
/// </summary>
/// <remarks>
/// Decisions where the semantics leave it open, written down:
/// <list type="bullet">
/// <item>Weights enter as y_n = w_n·x̃_n; the TIES sign is sign(Σ_n y_n) with 0 counted as +, an entry
/// agrees when sign(y_n) equals it (zeros never agree), and the merged entry is
/// λ·Σ_agreeing y_n / max(1, count of agreeing).</item>
/// <item>Factor space: x^A_n = sign(w_n)·√|w_n·s_n|·A_n and x^B_n = √|w_n·s_n|·B_n (weights folded in,
/// so the combine uses unit weights); λ multiplies the B side only, so ΔW = λ·B_m·A_m; output scale 1.</item>
/// <item>DARE streams are named <c>PATH.lora_A</c>, <c>PATH.lora_B</c> (factor space) or <c>PATH</c>
/// (delta space), task index 0-based; a kept entry is divided by (float)ρ.</item>
/// </list>
/// </remarks>
public sealed class ArithmeticMethod(string name, Sparsifier sparsifier, bool consensus, string description) : IMergeMethod
{
    /// <inheritdoc/>
    public string Name { get; } = name;

    /// <inheritdoc/>
    public string Description { get; } = description;

    /// <inheritdoc/>
    public MethodParameters Parameters { get; } = new()
    {
        Density = sparsifier == Sparsifier.None ? null : 0.2,
        Lambda = 1.0,
        Seed = sparsifier == Sparsifier.Drop,
        Space = true,
        Weights = true,
    };

    /// <summary>How tasks are sparsified.</summary>
    public Sparsifier Sparsifier { get; } = sparsifier;

    /// <summary>Whether TIES sign election combines the tasks.</summary>
    public bool Consensus { get; } = consensus;

    /// <inheritdoc/>
    public ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options)
    {
        if (options.EffectiveSpace == MergeSpace.Factors)
            return ResultForm.LowRank(ResultForm.EqualRanks(path, tasks, FactorSpace.FactorSpaceRanks));
        return Sparsifier == Sparsifier.None && !Consensus ? ResultForm.LowRank(tasks.Sum(t => t.Rank)) : ResultForm.Dense;
    }

    /// <inheritdoc/>
    public ModuleResult MergeModule(MergeRoute route, ModuleInput module, MergeOptions options) =>
        options.EffectiveSpace == MergeSpace.Factors ? MergeFactors(route, module, options) : MergeDelta(route, module, options);

    private ModuleResult MergeFactors(MergeRoute route, ModuleInput m, MergeOptions o)
    {
        int n = m.Tasks.Count;
        // x^A_n = sign(w_n)·√|w_n·s_n|·A_n, x^B_n = √|w_n·s_n|·B_n: the weights are in the factors now.
        var (xa, xb, r) = FactorSpace.WeightedFactors(m, o);
        var stats = new ModuleStats();
        Sparsify(route, m, xa, $"{m.Path}.lora_A", o, stats, stats.ThresholdsA, stats.KeptFractionA, MergeErrors.WeightedOverflow(m, o, "lora_A"));
        Sparsify(route, m, xb, $"{m.Path}.lora_B", o, stats, stats.ThresholdsB, stats.KeptFractionB, MergeErrors.WeightedOverflow(m, o, "lora_B"));
        var unit = Enumerable.Repeat(1.0, n).ToArray();
        var a = Combine(xa, unit, 1.0, route.Parallel);
        var b = Combine(xb, unit, o.EffectiveLambda, route.Parallel);
        return new LowRankResult(b, a, r, 1.0, r) { Stats = stats };
    }

    private ModuleResult MergeDelta(MergeRoute route, ModuleInput m, MergeOptions o)
    {
        int n = m.Tasks.Count;
        // Plain task arithmetic is a sum of products: λ Σ w_n s_n B_n A_n is exactly the LoRA pair
        // [λ w_1 s_1 B_1 | …] · [A_1; …] of rank Σ r_n, which an adapter output or an exact re-rank
        // can use without ever forming the dense matrix.
        if (Sparsifier == Sparsifier.None && !Consensus)
            return route.Concatenate(m, (task, _) => o.EffectiveLambda * o.WeightOf(m, task) * m.Tasks[task].Scale, new ModuleStats());
        var stats = new ModuleStats();
        var deltas = new List<float[]>(n);
        for (int task = 0; task < n; task++) deltas.Add(route.TaskDelta(m, task));
        Sparsify(route, m, deltas, m.Path, o, stats, stats.ThresholdsA, stats.KeptFractionA, MergeErrors.DeltaOverflow(m));
        var w = Enumerable.Range(0, n).Select(task => o.WeightOf(m, task)).ToArray();
        return new DenseResult(Combine(deltas, w, o.EffectiveLambda, route.Parallel)) { Stats = stats };
    }

    private void Sparsify(MergeRoute route, ModuleInput m, List<float[]> xs, string streamName, MergeOptions o, ModuleStats stats, List<float> thresholds,
        List<double> keptFractions, Func<int, TaskInputException> nonFinite)
    {
        switch (Sparsifier)
        {
            case Sparsifier.None:
                return;
            case Sparsifier.Trim:
            {
                var sel = route.TrimEach(xs, o.EffectiveDensity, nonFinite);
                for (int i = 0; i < xs.Count; i++)
                {
                    thresholds.Add(sel[i].Threshold);
                    stats.Kept += sel[i].Kept;
                    stats.Total += xs[i].Length;
                    keptFractions.Add(ModuleStats.Fraction(sel[i].Kept, xs[i].Length));
                }
                return;
            }
            case Sparsifier.Drop:
            {
                double rho = o.EffectiveDensity;
                uint keep = CounterRandom.KeepThreshold(rho);
                float fr = (float)rho;
                for (int task = 0; task < xs.Count; task++)
                {
                    ulong key = CounterRandom.StreamKey(o.EffectiveSeed, streamName, m.AdapterOf(task));
                    var x = xs[task];
                    long kept = 0;
                    for (long i = 0; i < x.LongLength; i++)
                    {
                        if (!float.IsFinite(x[i]))
                            throw nonFinite(task);
                        if (CounterRandom.Keep(key, i, keep)) { x[i] /= fr; kept++; }
                        else x[i] = 0f;
                    }
                    stats.Kept += kept;
                    stats.Total += x.LongLength;
                    keptFractions.Add(ModuleStats.Fraction(kept, x.LongLength));
                }
                return;
            }
        }
    }

    /// <summary>λ·Σ w_n x_n, or with <see cref="Consensus"/> the TIES disjoint mean over sign-agreeing entries.</summary>
    /// <remarks>
    /// Per element, in fp32: total = Σ_t w_t·x_t from +0 in task order (each product rounded, then added);
    /// with consensus, the entries y_t = w_t·x_t that are non-zero and on the side of total (y &gt; 0 exactly
    /// when total ≥ 0) are summed from +0 in task order and divided by their count (at least 1), then
    /// multiplied by λ. Vector256 lanes do exactly these operations (a masked-out lane adds +0, which leaves
    /// a sum that cannot be −0 unchanged), in blocks spread over the threads.
    /// </remarks>
    internal float[] Combine(IReadOnlyList<float[]> xs, double[] weights, double lambda, ParallelOptions parallel)
    {
        var x = xs.ToArray();
        int n = x.Length;
        int len = x[0].Length;
        var result = GC.AllocateUninitializedArray<float>(len);
        var w = weights.Select(v => (float)v).ToArray();
        float l = (float)lambda;
        bool consensus = Consensus;
        HostLoops.ForBlocks(len, 1 << 14, parallel, (i, end) =>
        {
            if (Vector256.IsHardwareAccelerated)
                for (; i <= end - Vector256<float>.Count; i += Vector256<float>.Count)
                {
                    var total = Vector256<float>.Zero;
                    for (int t = 0; t < n; t++) total += Vector256.Create(w[t]) * Vector256.Create(x[t], i);
                    if (!consensus)
                    {
                        (Vector256.Create(l) * total).CopyTo(result, i);
                        continue;
                    }
                    var positive = Vector256.GreaterThanOrEqual(total, Vector256<float>.Zero).AsInt32();
                    var sum = Vector256<float>.Zero;
                    var count = Vector256<int>.Zero;
                    for (int t = 0; t < n; t++)
                    {
                        var y = Vector256.Create(w[t]) * Vector256.Create(x[t], i);
                        var agree = ~Vector256.Equals(y, Vector256<float>.Zero).AsInt32()
                            & ~(Vector256.GreaterThan(y, Vector256<float>.Zero).AsInt32() ^ positive);
                        sum += (y.AsInt32() & agree).AsSingle();
                        count -= agree;
                    }
                    var divisor = Vector256.ConvertToSingle(Vector256.Max(count, Vector256<int>.One));
                    (Vector256.Create(l) * (sum / divisor)).CopyTo(result, i);
                }
            for (; i < end; i++) result[i] = CombineOne(x, w, l, i);
        });
        return result;
    }

    internal float CombineOne(float[][] x, float[] w, float l, int i)
    {
        float total = 0;
        for (int t = 0; t < x.Length; t++) total += w[t] * x[t][i];
        if (!Consensus) return l * total;
        bool positive = total >= 0;
        float sum = 0;
        int count = 0;
        for (int t = 0; t < x.Length; t++)
        {
            float y = w[t] * x[t][i];
            if (y != 0 && (y > 0) == positive)
            {
                sum += y;
                count++;
            }
        }
        return l * (sum / Math.Max(1, count));
    }
}
