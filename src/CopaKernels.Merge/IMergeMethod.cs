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

    /// <summary>The parameters this method reads and their defaults; any other one given is refused.</summary>
    MethodParameters Parameters { get; }

    /// <summary>Merges one module. Input problems throw <see cref="Formats.CopaInputException"/> naming the module.</summary>
    ModuleResult MergeModule(IMergeBackend backend, ModuleInput module, MergeOptions options);

    /// <summary>
    /// What <see cref="MergeModule"/> will return for a module whose adapters have these ranks, decided
    /// from headers alone so a job is checked before any heavy read. Throws
    /// <see cref="Formats.CopaInputException"/> (naming <paramref name="path"/>) when the ranks or
    /// alphas cannot be merged by this method with these options.
    /// </summary>
    ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options);
}

/// <summary>
/// A method that reads a deferred module's factors itself (<see cref="ModuleInput.Deferred"/>), each
/// right before it uses it, on the backends for which this says true.
/// </summary>
internal interface IReadsDeferredFactors
{
    bool ReadsDeferred(IMergeBackend backend);
}

/// <summary>The shape of a merged module, known before merging.</summary>
/// <param name="Rank">Inner dimension of the low-rank result, or 0 for a dense ΔW.</param>
/// <param name="DenseArrays">
/// For a dense result: how many d_out × d_in F32 arrays the method holds at once besides the N task
/// deltas (its result included), for the memory plan.
/// </param>
public readonly record struct ResultForm(int Rank, int DenseArrays = 0)
{
    /// <summary>A dense d_out × d_in ΔW made with the task deltas and one more array (the result).</summary>
    public static ResultForm Dense => new(0, 1);

    /// <summary>A dense ΔW whose method holds <paramref name="arrays"/> d_out × d_in arrays besides the task deltas.</summary>
    public static ResultForm DenseHolding(int arrays) => new(0, arrays);

    /// <summary>A low-rank pair of inner dimension <paramref name="rank"/>.</summary>
    public static ResultForm LowRank(int rank) => new(rank);

    /// <summary>Whether the result is dense.</summary>
    public bool IsDense => Rank == 0;

    /// <summary>The common rank; throws naming the module when the adapters' ranks differ.</summary>
    internal static int EqualRanks(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, string why)
    {
        var ranks = tasks.Select(t => t.Rank).ToList();
        if (ModuleOps.FirstDiffering(ranks) is var other and > 0)
            throw new TaskInputException(other, path, $"ranks differ between adapters ({string.Join(", ", ranks)}); {why}");
        return ranks[0];
    }
}

/// <summary>The registry of methods (SPEC §2–§4).</summary>
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
