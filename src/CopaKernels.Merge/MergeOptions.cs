using CopaKernels.Formats;

namespace CopaKernels.Merge;

/// <summary>Where a baseline operates (SPEC §4).</summary>
public enum MergeSpace
{
    /// <summary>On the A stack and the B stack separately, PEFT-style √ weighting; output a LoRA of rank r.</summary>
    Factors,
    /// <summary>On the dense ΔW_n = s_n·B_n·A_n of each module.</summary>
    Delta,
}

/// <summary>
/// The parameters of a merge, with the SPEC's defaults. Null means "the method's default":
/// density 0.2; λ 2.0 for copa and copa-official, 1.0 for the baselines; clamp 0 (copa) or 0.2
/// (copa-official, fixed); pcb ratio 0.1; seed 0; weights 1.
/// </summary>
public sealed record MergeOptions
{
    /// <summary>Method name (see <see cref="MergeMethods.Names"/>).</summary>
    public required string Method { get; init; }

    /// <summary>ρ, the fraction kept by trims and by DARE.</summary>
    public double? Density { get; init; }

    /// <summary>λ.</summary>
    public double? Lambda { get; init; }

    /// <summary>CoPA's clamp c ∈ [0, 1).</summary>
    public double? Clamp { get; init; }

    /// <summary>CoPA's cross-task normalisation (step 4); off allows unequal ranks.</summary>
    public bool Normalize { get; init; } = true;

    /// <summary>PCB's ratio q ∈ (0, 1].</summary>
    public double? PcbRatio { get; init; }

    /// <summary>DARE's seed.</summary>
    public ulong Seed { get; init; }

    /// <summary>Space of the baselines.</summary>
    public MergeSpace Space { get; init; } = MergeSpace.Factors;

    /// <summary>Per-adapter weights w_n (default 1 each).</summary>
    public IReadOnlyList<double>? Weights { get; init; }

    /// <summary>The effective density.</summary>
    public double EffectiveDensity => Density ?? 0.2;

    /// <summary>The effective λ.</summary>
    public double EffectiveLambda => Lambda ?? (Method is "copa" or "copa-official" ? 2.0 : 1.0);

    /// <summary>The effective clamp.</summary>
    public double EffectiveClamp => Method == "copa-official" ? 0.2 : Clamp ?? 0.0;

    /// <summary>The effective PCB ratio.</summary>
    public double EffectivePcbRatio => PcbRatio ?? 0.1;

    /// <summary>w_n for task <paramref name="n"/>.</summary>
    public double WeightOf(int n) => Weights is { Count: > 0 } w ? w[n] : 1.0;

    /// <summary>Checks names and ranges; throws <see cref="CopaInputException"/> with the parameter named.</summary>
    public void Validate(int tasks)
    {
        if (!MergeMethods.Names.Contains(Method))
            throw new CopaInputException(null, null, $"unknown method '{Method}' (expected {string.Join(", ", MergeMethods.Names)})");
        if (tasks < 1) throw new CopaInputException(null, null, "at least one adapter is needed");
        if (Density is { } d && !(d > 0 && d <= 1)) throw new CopaInputException(null, null, $"density {d} must be in (0, 1] (the fraction kept)");
        if (Lambda is { } l && !double.IsFinite(l)) throw new CopaInputException(null, null, $"lambda {l} must be a finite number");
        if (Clamp is { } c && !(c >= 0 && c < 1)) throw new CopaInputException(null, null, $"clamp {c} must be in [0, 1)");
        if (Clamp is not null && Method == "copa-official" && Clamp != 0.2)
            throw new CopaInputException(null, null, "copa-official fixes clamp at 0.2 (the released code's value); use method copa for another clamp");
        if (PcbRatio is { } q && !(q > 0 && q <= 1)) throw new CopaInputException(null, null, $"pcb-ratio {q} must be in (0, 1]");
        if (Weights is { Count: > 0 } w)
        {
            if (w.Count != tasks) throw new CopaInputException(null, null, $"{w.Count} weights for {tasks} adapters; give one weight per adapter, in order");
            foreach (var x in w) if (!double.IsFinite(x)) throw new CopaInputException(null, null, $"weight {x} must be a finite number");
        }
    }
}
