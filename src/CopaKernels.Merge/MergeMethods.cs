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

    /// <summary>
    /// Other tools' names for the same merges (PEFT's <c>add_weighted_adapter</c> combination types,
    /// mergekit's <c>merge_method</c>), where the semantics are copa's: <c>linear</c> and
    /// <c>task_arithmetic</c> are a weighted sum of the task updates, <c>dare_linear</c> is DARE followed
    /// by that sum. Besides these, any name is matched without case and with <c>_</c> for <c>-</c>.
    /// </summary>
    public static IReadOnlyDictionary<string, string> Aliases { get; } = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["linear"] = "task-arithmetic",
        ["dare-linear"] = "dare",
    };

    /// <summary>The canonical name of <paramref name="name"/> (a method's name or an alias, any case, _ or -), or null.</summary>
    public static string? Canonical(string name)
    {
        var key = name.Trim().ToLowerInvariant().Replace('_', '-');
        if (Aliases.TryGetValue(key, out var target)) return target;
        foreach (var n in Names)
            if (n == key) return n;
        return null;
    }

    /// <summary>The method called <paramref name="name"/> (or an alias of it: see <see cref="Canonical"/>).</summary>
    public static IMergeMethod Get(string name) =>
        Canonical(name) is { } canonical ? All.First(m => m.Name == canonical) : throw new ParameterException("method",
            $"unknown method '{name}' (expected {string.Join(", ", Names)}; also {string.Join(", ", Aliases.Keys)})");
}
