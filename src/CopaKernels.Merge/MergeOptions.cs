using CopaKernels.Formats;

namespace CopaKernels.Merge;

/// <summary>Where a baseline operates (SEMANTICS §4).</summary>
public enum MergeSpace
{
    /// <summary>On the A stack and the B stack separately, PEFT-style √ weighting; output a LoRA of rank r.</summary>
    Factors,
    /// <summary>On the dense ΔW_n = s_n·B_n·A_n of each module.</summary>
    Delta,
}

/// <summary>
/// The parameters of a merge. Null means "the method's default" (see <see cref="IMergeMethod.Parameters"/>:
/// density 0.2; λ 2.0 for copa and copa-official, 1.0 for the baselines; clamp 0 (copa) or 0.2
/// (copa-official, fixed); pcb ratio 0.1; seed 0; space factors; weights 1). A parameter the method does
/// not read must stay null: <see cref="Validate"/> refuses it, since it would do nothing.
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
    public bool? Normalize { get; init; }

    /// <summary>PCB's ratio q ∈ (0, 1].</summary>
    public double? PcbRatio { get; init; }

    /// <summary>DARE's seed.</summary>
    public ulong? Seed { get; init; }

    /// <summary>Space of the baselines.</summary>
    public MergeSpace? Space { get; init; }

    /// <summary>Per-adapter weights w_n (default 1 each).</summary>
    public IReadOnlyList<double>? Weights { get; init; }

    /// <summary>What the method reads and its defaults.</summary>
    public MethodParameters Declared => MergeMethods.Get(Method).Parameters;

    /// <summary>The effective density.</summary>
    public double EffectiveDensity => Effective(Density, MergeParameter.Density, m => m.Density);

    /// <summary>The effective λ.</summary>
    public double EffectiveLambda => Effective(Lambda, MergeParameter.Lambda, m => m.Lambda);

    /// <summary>The effective clamp.</summary>
    public double EffectiveClamp => Effective(Clamp, MergeParameter.Clamp, m => m.Clamp);

    /// <summary>The effective cross-task normalisation.</summary>
    public bool EffectiveNormalize => Effective(Normalize, MergeParameter.Normalize, m => m.Normalize);

    /// <summary>The effective PCB ratio.</summary>
    public double EffectivePcbRatio => Effective(PcbRatio, MergeParameter.PcbRatio, m => m.PcbRatio);

    /// <summary>The effective seed.</summary>
    public ulong EffectiveSeed => Seed ?? 0;

    /// <summary>The effective space.</summary>
    public MergeSpace EffectiveSpace => Space ?? MergeSpace.Factors;

    /// <summary>w_n for task <paramref name="n"/>.</summary>
    public double WeightOf(int n) => Weights is { Count: > 0 } w ? w[n] : 1.0;

    /// <summary>w_n for task <paramref name="task"/> of <paramref name="module"/>: the weight of the adapter it is.</summary>
    public double WeightOf(ModuleInput module, int task) => WeightOf(module.AdapterOf(task));

    /// <summary>The value given, else the method's default; the default alone where the method fixes it.</summary>
    private T Effective<T>(T? given, MergeParameter p, Func<MethodParameters, T?> pick) where T : struct
    {
        var declared = Declared;
        return pick(declared) is { } d
            ? declared.Fixed.Contains(p) ? d : given ?? d
            : throw new InvalidOperationException($"{Method} does not read {MethodParameters.NameOf(p)}");
    }

    /// <summary>
    /// Checks names and ranges, and that every parameter given is one the method reads (with the fixed
    /// value where the method fixes it); throws <see cref="ParameterException"/> naming the parameter.
    /// </summary>
    public void Validate(int tasks)
    {
        MergeMethods.Get(Method); // an unknown name is refused there, listing the names and aliases
        if (tasks < 1) throw new CopaInputException(null, null, "at least one adapter is needed");
        var declared = Declared;
        Read(MergeParameter.Density, Density != null);
        Read(MergeParameter.Lambda, Lambda != null);
        Read(MergeParameter.Clamp, Clamp != null);
        Read(MergeParameter.Normalize, Normalize != null);
        Read(MergeParameter.PcbRatio, PcbRatio != null);
        Read(MergeParameter.Seed, Seed != null);
        Read(MergeParameter.Space, Space != null);
        Read(MergeParameter.Weights, Weights is { Count: > 0 });
        if (Density is { } d && !(d > 0 && d <= 1)) throw new ParameterException("density", $"density {Number(d)} must be in (0, 1] (the fraction kept)");
        if (Lambda is { } l && !double.IsFinite(l)) throw new ParameterException("lambda", $"lambda {Number(l)} must be a finite number");
        if (Clamp is { } c && !(c >= 0 && c < 1)) throw new ParameterException("clamp", $"clamp {Number(c)} must be in [0, 1)");
        if (Clamp is { } fc && declared.Fixed.Contains(MergeParameter.Clamp) && fc != declared.Clamp)
            throw new ParameterException("clamp", $"{Method} fixes clamp at {Number(declared.Clamp!.Value)} (the released code's value); use method copa for another clamp");
        if (Normalize is { } fn && declared.Fixed.Contains(MergeParameter.Normalize) && fn != declared.Normalize)
            throw new ParameterException("normalize", $"{Method} always normalises across tasks (the released code does); use method copa with normalize false");
        if (PcbRatio is { } q && !(q > 0 && q <= 1)) throw new ParameterException("pcb-ratio", $"pcb-ratio {Number(q)} must be in (0, 1]");
        if (Weights is { Count: > 0 } w)
        {
            if (w.Count != tasks) throw new ParameterException("weight", $"{w.Count} weights for {tasks} adapters; give one weight per adapter, in order");
            foreach (var x in w) if (!double.IsFinite(x)) throw new ParameterException("weight", $"weight {Number(x)} must be a finite number");
        }

        void Read(MergeParameter p, bool given)
        {
            if (!given || declared.Reads(p)) return;
            var name = MethodParameters.NameOf(p);
            var users = MergeMethods.All.Where(m => m.Parameters.Reads(p)).Select(m => m.Name).ToList();
            throw new ParameterException(name, $"method {Method} does not use `{name}`" +
                (users.Count > 0 ? $" (it applies to {string.Join(", ", users)})" : ""));
        }
    }

    private static string Number(double x) => x.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
}
