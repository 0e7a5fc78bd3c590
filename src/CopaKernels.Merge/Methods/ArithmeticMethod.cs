using CopaKernels.Formats;
using CopaKernels.Kernels;

namespace CopaKernels.Merge.Methods;

/// <summary>How each task's tensor is sparsified before combining.</summary>
public enum Sparsifier
{
    /// <summary>Kept whole.</summary>
    None,
    /// <summary>Magnitude trim to density ρ (SPEC §1, exact, on the backend).</summary>
    Trim,
    /// <summary>DARE: each entry kept with probability ρ (counter-based stream), kept ones divided by ρ.</summary>
    Drop,
}

/// <summary>
/// Task arithmetic and its sparsified relatives as one configurable method (sparsifier × sign
/// consensus × λ), as mergekit structures them: task-arithmetic, ties, dare, dare-ties,
/// magnitude-prune (SPEC §4), in factor space or delta space.
/// </summary>
/// <remarks>
/// Decisions where the SPEC is silent, written down:
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

    /// <summary>How tasks are sparsified.</summary>
    public Sparsifier Sparsifier { get; } = sparsifier;

    /// <summary>Whether TIES sign election combines the tasks.</summary>
    public bool Consensus { get; } = consensus;

    /// <inheritdoc/>
    public ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options)
    {
        if (options.Space == MergeSpace.Factors)
            return ResultForm.LowRank(ResultForm.EqualRanks(path, tasks, ModuleOps.FactorSpaceRanks));
        return Sparsifier == Sparsifier.None && !Consensus ? ResultForm.LowRank(tasks.Sum(t => t.Rank)) : ResultForm.Dense;
    }

    /// <inheritdoc/>
    public ModuleResult MergeModule(IMergeBackend backend, ModuleInput module, MergeOptions options) =>
        options.Space == MergeSpace.Factors ? MergeFactors(backend, module, options) : MergeDelta(backend, module, options);

    private ModuleResult MergeFactors(IMergeBackend backend, ModuleInput m, MergeOptions o)
    {
        int n = m.Tasks.Count;
        var (xa, xb, r) = ModuleOps.WeightedFactors(m, o);
        var stats = new ModuleStats();
        Sparsify(backend, xa, $"{m.Path}.lora_A", o, stats, stats.ThresholdsA, m.Path);
        Sparsify(backend, xb, $"{m.Path}.lora_B", o, stats, stats.ThresholdsB, m.Path);
        var unit = Enumerable.Repeat(1.0, n).ToArray();
        var a = Combine(xa, unit, 1.0);
        var b = Combine(xb, unit, o.EffectiveLambda);
        return new LowRankResult(b, a, r, 1.0, r) { Stats = stats };
    }

    private ModuleResult MergeDelta(IMergeBackend backend, ModuleInput m, MergeOptions o)
    {
        int n = m.Tasks.Count;
        // Plain task arithmetic is a sum of products: λ Σ w_n s_n B_n A_n is exactly the LoRA pair
        // [λ w_1 s_1 B_1 | …] · [A_1; …] of rank Σ r_n, which an adapter output or an exact re-rank
        // can use without ever forming the dense matrix.
        if (Sparsifier == Sparsifier.None && !Consensus) return Concatenated(m, o);
        var stats = new ModuleStats();
        var deltas = new List<float[]>(n);
        for (int task = 0; task < n; task++) deltas.Add(ModuleOps.Delta(backend, m, task));
        Sparsify(backend, deltas, m.Path, o, stats, stats.ThresholdsA, m.Path);
        var w = Enumerable.Range(0, n).Select(o.WeightOf).ToArray();
        return new DenseResult(Combine(deltas, w, o.EffectiveLambda)) { Stats = stats };
    }

    private static LowRankResult Concatenated(ModuleInput m, MergeOptions o) =>
        ModuleOps.Concatenate(m, m.Tasks.Select(t => t.B).ToList(), m.Tasks.Select(t => t.A).ToList(),
            (task, _) => o.EffectiveLambda * o.WeightOf(task) * m.Tasks[task].Scale, new ModuleStats());

    private void Sparsify(IMergeBackend backend, List<float[]> xs, string streamName, MergeOptions o, ModuleStats stats, List<float> thresholds, string path)
    {
        double rho = o.EffectiveDensity;
        switch (Sparsifier)
        {
            case Sparsifier.None:
                return;
            case Sparsifier.Trim:
            {
                using var packed = new PackedTensors(backend, xs);
                var sel = new SelectionResult[xs.Count];
                try { backend.SelectByMagnitudeBatched(packed.Buffer, packed.Ranges, rho, sel); }
                catch (NonFiniteInputException e)
                {
                    throw ModuleOps.NonFinite(path, e.RangeIndex);
                }
                for (int i = 0; i < xs.Count; i++)
                {
                    xs[i] = packed.Download(i);
                    thresholds.Add(sel[i].Threshold);
                    stats.Kept += sel[i].Kept;
                    stats.Total += xs[i].Length;
                }
                return;
            }
            case Sparsifier.Drop:
            {
                uint keep = CounterRandom.KeepThreshold(rho);
                float fr = (float)rho;
                for (int task = 0; task < xs.Count; task++)
                {
                    ulong key = CounterRandom.StreamKey(o.Seed, streamName, task);
                    var x = xs[task];
                    long kept = 0;
                    for (long i = 0; i < x.LongLength; i++)
                    {
                        if (!float.IsFinite(x[i]))
                            throw ModuleOps.NonFinite(path, task);
                        if (CounterRandom.Keep(key, i, keep)) { x[i] /= fr; kept++; }
                        else x[i] = 0f;
                    }
                    stats.Kept += kept;
                    stats.Total += x.LongLength;
                }
                return;
            }
        }
    }

    /// <summary>λ·Σ w_n x_n, or with <see cref="Consensus"/> the TIES disjoint mean over sign-agreeing entries.</summary>
    internal float[] Combine(IReadOnlyList<float[]> xs, double[] weights, double lambda)
    {
        int n = xs.Count;
        long len = xs[0].LongLength;
        var result = new float[len];
        var w = weights.Select(x => (float)x).ToArray();
        float l = (float)lambda;
        for (long i = 0; i < len; i++)
        {
            float total = 0;
            for (int t = 0; t < n; t++) total += w[t] * xs[t][i];
            if (!Consensus)
            {
                result[i] = l * total;
                continue;
            }
            bool positive = total >= 0;
            float sum = 0;
            int count = 0;
            for (int t = 0; t < n; t++)
            {
                float y = w[t] * xs[t][i];
                if (y != 0 && (y > 0) == positive)
                {
                    sum += y;
                    count++;
                }
            }
            result[i] = l * (sum / Math.Max(1, count));
        }
        return result;
    }
}
