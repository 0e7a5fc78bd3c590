namespace CopaKernels.Merge;

/// <summary>The registry of methods (SEMANTICS §2–§4).</summary>
public static class MergeMethods
{
    /// <summary>Every method, in documentation order.</summary>
    public static IReadOnlyList<IMergeMethod> All { get; } =
    [
        new Methods.CopaMethod(),
        new Methods.CopaOfficialMethod(),
        new Methods.ArithmeticMethod("task-arithmetic", Methods.Sparsifier.None, consensus: false, "λ Σ w_n ΔW_n"),
        new Methods.ArithmeticMethod("ties", Methods.Sparsifier.Trim, consensus: true, "trim to ρ, elect signs, disjoint mean (Yadav et al. 2023)"),
        new Methods.ArithmeticMethod("dare", Methods.Sparsifier.Drop, consensus: false, "random drop with rescale 1/ρ, then task arithmetic (Yu et al. 2024)"),
        new Methods.ArithmeticMethod("dare-ties", Methods.Sparsifier.Drop, consensus: true, "random drop with rescale 1/ρ, then TIES sign election"),
        new Methods.ArithmeticMethod("magnitude-prune", Methods.Sparsifier.Trim, consensus: false, "trim to ρ, then task arithmetic"),
        new Methods.PcbMethod(),
    ];

    /// <summary>Every method name, in documentation order.</summary>
    public static IReadOnlyList<string> Names { get; } = All.Select(m => m.Name).ToArray();

    /// <summary>The method called <paramref name="name"/>.</summary>
    public static IMergeMethod Get(string name) =>
        All.FirstOrDefault(m => m.Name == name) ?? throw new ParameterException("method",
            $"unknown method '{name}' (expected {string.Join(", ", Names)})");
}
