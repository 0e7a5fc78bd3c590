namespace CopaKernels.Merge;

/// <summary>One task's LoRA factors of one module, as F32 on the host.</summary>
/// <param name="A">r × d_in, row-major.</param>
/// <param name="B">d_out × r, row-major.</param>
/// <param name="Rank">r.</param>
/// <param name="Scale">s_n = α/r (or α/√r).</param>
/// <param name="Alpha">lora_alpha (copa-official carries the first adapter's).</param>
public sealed record TaskFactors(float[] A, float[] B, int Rank, double Scale, double Alpha);

/// <summary>All tasks' factors of one module.</summary>
/// <param name="Path">Module path (used in messages and as the DARE stream name).</param>
/// <param name="DOut">Output dimension.</param>
/// <param name="DIn">Input dimension.</param>
/// <param name="Tasks">One entry per adapter, in order.</param>
public sealed record ModuleInput(string Path, int DOut, int DIn, IReadOnlyList<TaskFactors> Tasks)
{
    private Factors.FactorSet? _factors;

    /// <summary>
    /// Which of the merge's adapters each task is (0-based, ascending), where only some adapters have this
    /// module; null when task n is adapter n. Weights, DARE's random streams and error messages follow
    /// the adapter, so a module merged over a subset sees each adapter as it would in the full merge.
    /// </summary>
    public IReadOnlyList<int>? Adapters { get; init; }

    /// <summary>The merge's index of task <paramref name="task"/>'s adapter (see <see cref="Adapters"/>).</summary>
    public int AdapterOf(int task) => Adapters is { } a ? a[task] : task;

    /// <summary>
    /// Where each factor's values are: the caller's F32 arrays (read only) unless the streaming feed made
    /// this input, whose arrays are the merge's own or not read from the adapter file yet.
    /// </summary>
    internal Factors.FactorSet Factors
    {
        get => _factors ??= Merge.Factors.FactorSet.CallerArrays(Tasks.Count);
        init => _factors = value;
    }
}
