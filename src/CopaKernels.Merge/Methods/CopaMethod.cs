using CopaKernels.Merge.Routes;

namespace CopaKernels.Merge.Methods;

/// <summary>
/// CoPA-Merging as in the paper's Algorithm 1 (SEMANTICS §2): ΔW = λ Σ_n s_n B̃_n diag(S̃_n) Ã_n, returned
/// losslessly as a LoRA pair of rank Σ r_n: B = [λ s_1 B̃_1 diag(S̃_1) | …], A = [Ã_1; …; Ã_N], scale 1.
/// </summary>
public sealed class CopaMethod : IMergeMethod, ITrimsEveryFactorFirst
{
    /// <inheritdoc/>
    public string Name => "copa";

    /// <inheritdoc/>
    public string Description => "CoPA-Merging, paper Algorithm 1: trim, complementary scaling, λ-sum (rank Σ r_n, exact)";

    /// <inheritdoc/>
    /// <remarks>No weights: the paper weighs tasks only by their complementary scales S̃_n.</remarks>
    public MethodParameters Parameters { get; } = new() { Density = 0.2, Lambda = 2.0, Clamp = 0.0, Normalize = true };

    private const string NormalizeRanks = "CoPA's cross-task normalisation needs one rank (or set normalize: false)";

    /// <inheritdoc/>
    public ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options)
    {
        if (options.EffectiveNormalize) ResultForm.EqualRanks(path, tasks, NormalizeRanks);
        return ResultForm.LowRank(tasks.Sum(t => t.Rank));
    }

    /// <inheritdoc/>
    public ModuleResult MergeModule(MergeRoute route, ModuleInput module, MergeOptions options)
    {
        var stats = new ModuleStats();
        double lambda = options.EffectiveLambda;
        bool normalize = options.EffectiveNormalize;
        if (normalize) FactorSpace.RequireEqualRanks(module, NormalizeRanks);
        // Step 1: Ã_n and B̃_n keep their top-ρ magnitudes; with the row sums of A_n and Ã_n for step 2.
        var trimmed = route.TrimWithRowSums(module, options.EffectiveDensity, TrimmedUse.Concatenation);
        // Steps 2–4: S_n[i] = Σ_j|A_n[i,j]| / Σ_j|Ã_n[i,j]|, clamped, normalised across tasks.
        var s = CopaScaling.Scales(module, trimmed, options.EffectiveClamp, normalize, stats);
        // Step 5: ΔW = λ Σ_n s_n B̃_n diag(S̃_n) Ã_n, one coefficient λ·s_n·S̃_n[j] per inner index (in double, rounded once).
        return route.Concatenate(module, trimmed, (task, j) => lambda * module.Tasks[task].Scale * s[task][j], stats);
    }
}
