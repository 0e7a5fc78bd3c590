using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge;

/// <summary>A module of a merge and the adapters that have it.</summary>
/// <param name="Path">Module path.</param>
/// <param name="Adapters">The merge's indices (0-based, ascending) of the adapters that target it.</param>
public sealed record AdapterModule(string Path, IReadOnlyList<int> Adapters);

/// <summary>
/// Lines up the modules of N adapters for a merge: the union of the modules they target, each with the
/// adapters that have it, as PEFT's <c>add_weighted_adapter</c> merges each target over the adapters that
/// hold it (huggingface/peft, src/peft/tuners/lora/model.py: a target without the adapter is skipped).
/// Where several adapters have a module its d_out × d_in must agree (checked from headers alone, before
/// any heavy read); then each module's factors are read as F32 into a <see cref="ModuleInput"/>.
/// </summary>
public static class AdapterModules
{
    /// <summary>
    /// Every module some adapter targets, in ordinal path order, with the adapters that have it; throws
    /// <see cref="CopaInputException"/> naming the adapter and module when two adapters' shapes differ.
    /// </summary>
    public static IReadOnlyList<AdapterModule> Plan(IReadOnlyList<LoraAdapter> adapters)
    {
        if (adapters.Count == 0) throw new CopaInputException(null, null, "at least one adapter is needed");
        // Reference types and plain loops only: this runs once per merge, where generic code over value
        // types (tuples, LINQ over int) would be compiled at start for this one use.
        var first = new Dictionary<string, LoraModule>(StringComparer.Ordinal);
        var holders = new Dictionary<string, List<int>>(StringComparer.Ordinal);
        for (int n = 0; n < adapters.Count; n++)
            foreach (var m in adapters[n].Modules)
            {
                if (first.TryGetValue(m.Path, out var f))
                {
                    var firstFolder = adapters[holders[m.Path][0]].Folder;
                    if (m.DOut != f.DOut || m.DIn != f.DIn)
                        throw new CopaInputException(adapters[n].Folder, m.Path,
                            $"module is {m.DOut} × {m.DIn} here but {f.DOut} × {f.DIn} in {firstFolder}");
                    if (m.Embedding != f.Embedding)
                        throw new CopaInputException(adapters[n].Folder, m.Path,
                            $"module has {(m.Embedding ? "embedding" : "linear")} LoRA here but {(f.Embedding ? "embedding" : "linear")} LoRA in {firstFolder}");
                    holders[m.Path].Add(n);
                }
                else
                {
                    first[m.Path] = m;
                    holders[m.Path] = [n];
                }
            }
        var paths = new string[holders.Count];
        holders.Keys.CopyTo(paths, 0);
        Array.Sort(paths, StringComparer.Ordinal);
        var all = new int[adapters.Count];
        for (int n = 0; n < all.Length; n++) all[n] = n;
        var result = new List<AdapterModule>(paths.Length);
        foreach (var p in paths) result.Add(new AdapterModule(p, holders[p].Count == adapters.Count ? all : holders[p].ToArray()));
        return result;
    }

    /// <summary>Reads one module of every adapter as F32, into arrays the caller owns (a merge leaves them as they are).</summary>
    public static ModuleInput Load(IReadOnlyList<LoraAdapter> adapters, string path) =>
        Load(adapters, path, n => GC.AllocateUninitializedArray<float>(n)) with { Factors = Factors.FactorSet.CallerArrays(adapters.Count) };

    /// <summary>Reads one module of the adapters that have it (<see cref="Plan"/>) as F32, into arrays the caller owns.</summary>
    public static ModuleInput Load(IReadOnlyList<LoraAdapter> adapters, AdapterModule module)
    {
        var input = Load(adapters, module, n => GC.AllocateUninitializedArray<float>(n));
        return input with { Factors = Factors.FactorSet.CallerArrays(input.Tasks.Count) };
    }

    /// <summary>Every adapter has the module at <paramref name="path"/>.</summary>
    internal static ModuleInput Load(IReadOnlyList<LoraAdapter> adapters, string path, Func<int, float[]> allocate, bool defer = false) =>
        Load(adapters, new AdapterModule(path, Enumerable.Range(0, adapters.Count).ToArray()), allocate, defer);

    /// <summary>
    /// Reads one module of the adapters that have it as F32 into arrays from <paramref name="allocate"/>
    /// (exact lengths), which belong to the merge; with <paramref name="defer"/> the arrays are only
    /// allocated, and the module's <see cref="ModuleInput.Factors"/> reads each on demand.
    /// </summary>
    internal static ModuleInput Load(IReadOnlyList<LoraAdapter> adapters, AdapterModule module, Func<int, float[]> allocate, bool defer = false)
    {
        var path = module.Path;
        var holders = new List<LoraAdapter>(module.Adapters.Count);
        var tasks = new List<TaskFactors>(module.Adapters.Count);
        int dOut = 0, dIn = 0;
        foreach (int n in module.Adapters)
        {
            var adapter = adapters[n];
            if (!adapter.TryGetModule(path, out var m))
                throw new CopaInputException(adapter.Folder, path, "module not found in this adapter");
            dOut = checked((int)m.DOut);
            dIn = checked((int)m.DIn);
            var a = allocate(checked((int)m.A.ElementCount));
            var b = allocate(checked((int)m.B.ElementCount));
            if (!defer)
            {
                adapter.Weights.ReadSingles(m.A, 0, a);
                adapter.Weights.ReadSingles(m.B, 0, b);
            }
            holders.Add(adapter);
            tasks.Add(new TaskFactors(a, b, m.Rank, m.Scale, m.Alpha));
        }
        return new ModuleInput(path, dOut, dIn, tasks)
        {
            Adapters = module.Adapters.Count == adapters.Count ? null : module.Adapters,
            Factors = defer ? Factors.FactorSet.InFiles(holders, path, tasks) : Factors.FactorSet.OwnArrays(tasks.Count),
        };
    }
}
