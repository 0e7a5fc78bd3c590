using CopaKernels.Kernels;

namespace CopaKernels.Merge.Methods;

/// <summary>
/// CoPA-Merging as in the paper's Algorithm 1 (SPEC §2): ΔW = λ Σ_n s_n B̃_n diag(S̃_n) Ã_n, returned
/// losslessly as a LoRA pair of rank Σ r_n: B = [λ s_1 B̃_1 diag(S̃_1) | …], A = [Ã_1; …; Ã_N], scale 1.
/// </summary>
public sealed class CopaMethod : IMergeMethod
{
    /// <inheritdoc/>
    public string Name => "copa";

    /// <inheritdoc/>
    public string Description => "CoPA-Merging, paper Algorithm 1: trim, complementary scaling, λ-sum (rank Σ r_n, exact)";

    /// <inheritdoc/>
    public ModuleResult MergeModule(IMergeBackend backend, ModuleInput module, MergeOptions options)
    {
        var stats = new ModuleStats();
        var scaled = CopaScaling.Compute(backend, module, options.EffectiveDensity, options.EffectiveClamp, options.Normalize, stats);
        int n = module.Tasks.Count;
        int total = module.Tasks.Sum(t => t.Rank);
        int dOut = module.DOut, dIn = module.DIn;
        var b = new float[(long)dOut * total];
        var a = new float[(long)total * dIn];
        double lambda = options.EffectiveLambda;
        int col = 0;
        for (int task = 0; task < n; task++)
        {
            int r = module.Tasks[task].Rank;
            // One coefficient per inner index, λ·s_n·S̃_n[j], computed in double and rounded once.
            var coef = new float[r];
            for (int j = 0; j < r; j++) coef[j] = (float)(lambda * module.Tasks[task].Scale * scaled.S[task][j]);
            var bt = scaled.BTrimmed[task];
            for (int i = 0; i < dOut; i++)
                for (int j = 0; j < r; j++)
                    b[(long)i * total + col + j] = bt[(long)i * r + j] * coef[j];
            Array.Copy(scaled.ATrimmed[task], 0, a, (long)col * dIn, (long)r * dIn);
            col += r;
        }
        return new LowRankResult(b, a, total, 1.0, total) { Stats = stats };
    }
}
