using CopaKernels.Merge.Routes;

namespace CopaKernels.Merge.Methods;

/// <summary>
/// CoPA as released (SEMANTICS §3): the same trim and S with clamp 0.2, then A_m = λ Σ_n Ã_n and
/// B_m = λ Σ_n B̃_n diag(S̃_n), a LoRA of the inputs' rank r with the first adapter's lora_alpha.
/// The effective update (α/r)·B_m·A_m holds the cross-task terms B̃_t·Ã_s, as the released code does.
/// </summary>
public sealed class CopaOfficialMethod : IMergeMethod, ITrimsEveryFactorFirst
{
    /// <inheritdoc/>
    public string Name => "copa-official";

    /// <inheritdoc/>
    public string Description => "CoPA as released (RobustMerge code): clamp 0.2, A = λΣÃ, B = λΣB̃·diag(S̃), rank r";

    /// <inheritdoc/>
    /// <remarks>The released code fixes the clamp at 0.2 and always normalises; it has no weights.</remarks>
    public MethodParameters Parameters { get; } = new()
    {
        Density = 0.2, Lambda = 2.0, Clamp = 0.2, Normalize = true,
        Fixed = new HashSet<MergeParameter> { MergeParameter.Clamp, MergeParameter.Normalize },
    };

    /// <inheritdoc/>
    public ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options)
    {
        RequireShared(path, tasks);
        return ResultForm.LowRank(tasks[0].Rank);
    }

    /// <summary>Throws naming the first adapter whose r or lora_alpha differs from the first's.</summary>
    /// <remarks>Compared field by field: a tuple's default equality comparer is built by reflection at run time.</remarks>
    private static void RequireShared(string path, IReadOnlyList<(int Rank, double Alpha)> tasks)
    {
        for (int i = 1; i < tasks.Count; i++)
            if (tasks[i].Rank != tasks[0].Rank || tasks[i].Alpha != tasks[0].Alpha)
                throw new TaskInputException(i, path, SharedRankMessage(tasks));
    }

    private static string SharedRankMessage(IEnumerable<(int Rank, double Alpha)> tasks) =>
        $"copa-official needs every adapter to share r and lora_alpha (got r = {string.Join("/", tasks.Select(x => x.Rank))}, alpha = {string.Join("/", tasks.Select(x => x.Alpha))})";

    /// <inheritdoc/>
    public ModuleResult MergeModule(MergeRoute route, ModuleInput module, MergeOptions options)
    {
        var first = module.Tasks[0];
        RequireShared(module.Path, module.Tasks.Select(t => (t.Rank, t.Alpha)).ToList());
        var stats = new ModuleStats();
        // Steps 1–4 as in the paper, with the released code's clamp and normalisation.
        var trimmed = route.TrimWithRowSums(module, options.EffectiveDensity, TrimmedUse.OrderedSums);
        var s = CopaScaling.Scales(module, trimmed, options.EffectiveClamp, normalize: true, stats);
        // A_m = λ Σ_n Ã_n and B_m = λ Σ_n B̃_n·diag(S̃_n), a LoRA of rank r with the first adapter's scale.
        return route.SumThenScale(module, trimmed, s, options.EffectiveLambda, first.Scale, first.Alpha, stats);
    }
}
