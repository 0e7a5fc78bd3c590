using CopaKernels.Kernels;

namespace CopaKernels.Merge;

/// <summary>
/// A merge method: what it is called, and how it merges one module of N adapters on a backend.
/// Methods use the kernel API only, so every backend runs them unchanged.
/// </summary>
public interface IMergeMethod
{
    /// <summary>The name used on the command line and in configs.</summary>
    string Name { get; }

    /// <summary>One line for help texts.</summary>
    string Description { get; }

    /// <summary>Merges one module. Input problems throw <see cref="Formats.CopaInputException"/> naming the module.</summary>
    ModuleResult MergeModule(IMergeBackend backend, ModuleInput module, MergeOptions options);
}

/// <summary>The registry of methods (SPEC §2–§4).</summary>
public static class MergeMethods
{
    private static readonly IMergeMethod[] All =
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
        All.FirstOrDefault(m => m.Name == name) ?? throw new Formats.CopaInputException(null, null,
            $"unknown method '{name}' (expected {string.Join(", ", Names)})");
}
