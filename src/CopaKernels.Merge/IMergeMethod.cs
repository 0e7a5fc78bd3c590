using CopaKernels.Kernels;
using CopaKernels.Merge.Routes;

namespace CopaKernels.Merge;

/// <summary>
/// A merge method: what it is called, the parameters it reads, and how it merges one module of N adapters.
/// A method is its math: it calls the operations of a <see cref="MergeRoute"/> (trims, row sums, task
/// deltas, ordered sums, concatenation) and nothing backend-specific, so every backend runs it unchanged.
/// </summary>
public interface IMergeMethod
{
    /// <summary>The name used on the command line and in configs.</summary>
    string Name { get; }

    /// <summary>One line for help texts.</summary>
    string Description { get; }

    /// <summary>The parameters this method reads and their defaults; any other one given is refused.</summary>
    MethodParameters Parameters { get; }

    /// <summary>Merges one module on <paramref name="route"/>. Input problems throw <see cref="Formats.CopaInputException"/> naming the module.</summary>
    ModuleResult MergeModule(MergeRoute route, ModuleInput module, MergeOptions options);

    /// <summary>Merges one module on <paramref name="backend"/>'s route (<see cref="MergeRoute.For(IMergeBackend)"/>), into fresh arrays.</summary>
    ModuleResult MergeModule(IMergeBackend backend, ModuleInput module, MergeOptions options) =>
        MergeModule(MergeRoute.For(backend), module, options);

    /// <summary>
    /// What <see cref="MergeModule(MergeRoute, ModuleInput, MergeOptions)"/> will return for a module whose adapters have these ranks, decided
    /// from headers alone so a job is checked before any heavy read. Throws
    /// <see cref="Formats.CopaInputException"/> (naming <paramref name="path"/>) when the ranks or
    /// alphas cannot be merged by this method with these options.
    /// </summary>
    ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options);
}
