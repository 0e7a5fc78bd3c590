using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Merge.Methods;

/// <summary>
/// CoPA-Merging as in the paper's Algorithm 1 (SPEC §2): ΔW = λ Σ_n s_n B̃_n diag(S̃_n) Ã_n, returned
/// losslessly as a LoRA pair of rank Σ r_n: B = [λ s_1 B̃_1 diag(S̃_1) | …], A = [Ã_1; …; Ã_N], scale 1.
/// </summary>
public sealed class CopaMethod : IMergeMethod, IReadsDeferredFactors
{
    /// <inheritdoc/>
    public string Name => "copa";

    /// <inheritdoc/>
    public string Description => "CoPA-Merging, paper Algorithm 1: trim, complementary scaling, λ-sum (rank Σ r_n, exact)";

    /// <inheritdoc/>
    /// <remarks>No weights: the paper weighs tasks only by their complementary scales S̃_n.</remarks>
    public MethodParameters Parameters { get; } = new() { Density = 0.2, Lambda = 2.0, Clamp = 0.0, Normalize = true };

    /// <inheritdoc/>
    public ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options)
    {
        if (options.EffectiveNormalize) ResultForm.EqualRanks(path, tasks, "CoPA's cross-task normalisation needs one rank (or set normalize: false)");
        return ResultForm.LowRank(tasks.Sum(t => t.Rank));
    }

    bool IReadsDeferredFactors.ReadsDeferred(IMergeBackend backend) => CopaScaling.ReadsDeferred(backend);

    /// <inheritdoc/>
    public ModuleResult MergeModule(IMergeBackend backend, ModuleInput module, MergeOptions options)
    {
        var stats = new ModuleStats();
        double lambda = options.EffectiveLambda;
        var parallel = ModuleOps.HostParallel(backend);
        // One coefficient per inner index, λ·s_n·S̃_n[j], computed in double and rounded once.
        double[][] s = [];
        Func<int, int, double> coefficient = (task, j) => lambda * module.Tasks[task].Scale * s[task][j];
        if (backend is CpuBackend && CopaScaling.RawFormatOf(module) is { } format && module.EncodeAs is { } outType
            && outType == format.ToDType())
        {
            // Adapter output in the factors' own format: the pair is built in the output's bytes.
            var output = new EncodedConcatenation(module, format);
            s = CopaScaling.Compute(backend, module, options.EffectiveDensity, options.EffectiveClamp, options.EffectiveNormalize, stats, (format, output.Sink)).S;
            return output.Finish(coefficient, stats, parallel);
        }
        var scaled = CopaScaling.Compute(backend, module, options.EffectiveDensity, options.EffectiveClamp, options.EffectiveNormalize, stats);
        s = scaled.S;
        return ModuleOps.Concatenate(module, scaled.BTrimmed, scaled.ATrimmed, coefficient, stats, parallel);
    }
}
