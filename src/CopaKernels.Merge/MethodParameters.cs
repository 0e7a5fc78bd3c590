namespace CopaKernels.Merge;

/// <summary>A parameter of <see cref="MergeOptions"/> that a method may read.</summary>
public enum MergeParameter
{
    /// <summary>ρ, the fraction kept (<see cref="MergeOptions.Density"/>).</summary>
    Density,
    /// <summary>λ (<see cref="MergeOptions.Lambda"/>).</summary>
    Lambda,
    /// <summary>CoPA's clamp (<see cref="MergeOptions.Clamp"/>).</summary>
    Clamp,
    /// <summary>CoPA's cross-task normalisation (<see cref="MergeOptions.Normalize"/>).</summary>
    Normalize,
    /// <summary>PCB's ratio q (<see cref="MergeOptions.PcbRatio"/>).</summary>
    PcbRatio,
    /// <summary>DARE's seed (<see cref="MergeOptions.Seed"/>).</summary>
    Seed,
    /// <summary>Where a baseline operates (<see cref="MergeOptions.Space"/>).</summary>
    Space,
    /// <summary>Per-adapter weights (<see cref="MergeOptions.Weights"/>).</summary>
    Weights,
}

/// <summary>
/// The parameters a method reads and their defaults, declared by the method itself (as mergekit's
/// <c>parameters()</c>). A parameter a method does not read would do nothing, so giving one is an input
/// error; a parameter the method fixes accepts only its fixed value.
/// </summary>
public sealed record MethodParameters
{
    /// <summary>Default ρ, or null when the method has no trim or drop.</summary>
    public double? Density { get; init; }

    /// <summary>Default λ, or null when the method has none.</summary>
    public double? Lambda { get; init; }

    /// <summary>Default clamp, or null when the method has none.</summary>
    public double? Clamp { get; init; }

    /// <summary>Default cross-task normalisation, or null when the method has none.</summary>
    public bool? Normalize { get; init; }

    /// <summary>Default PCB ratio, or null when the method has none.</summary>
    public double? PcbRatio { get; init; }

    /// <summary>Whether the method draws random numbers from a seed (default 0).</summary>
    public bool Seed { get; init; }

    /// <summary>Whether the method runs in factor or delta space (default factors).</summary>
    public bool Space { get; init; }

    /// <summary>Whether the method weighs adapters (default 1 each).</summary>
    public bool Weights { get; init; }

    /// <summary>Parameters whose default is the only accepted value (copa-official's clamp and normalisation).</summary>
    public IReadOnlySet<MergeParameter> Fixed { get; init; } = new HashSet<MergeParameter>();

    /// <summary>Whether the method reads <paramref name="p"/>.</summary>
    public bool Reads(MergeParameter p) => p switch
    {
        MergeParameter.Density => Density != null,
        MergeParameter.Lambda => Lambda != null,
        MergeParameter.Clamp => Clamp != null,
        MergeParameter.Normalize => Normalize != null,
        MergeParameter.PcbRatio => PcbRatio != null,
        MergeParameter.Seed => Seed,
        MergeParameter.Space => Space,
        MergeParameter.Weights => Weights,
        _ => false,
    };

    /// <summary>The parameter's name as a command-line flag and config key (<c>pcb-ratio</c>, <c>weight</c>).</summary>
    public static string NameOf(MergeParameter p) => p switch
    {
        MergeParameter.PcbRatio => "pcb-ratio",
        MergeParameter.Weights => "weight",
        _ => p.ToString().ToLowerInvariant(),
    };
}
