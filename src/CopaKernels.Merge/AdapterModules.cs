using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge;

/// <summary>
/// Lines up the modules of N adapters for a merge: every adapter must target the same modules with
/// the same d_out × d_in (checked from headers alone, before any heavy read), then each module's
/// factors are read as F32 into a <see cref="ModuleInput"/>.
/// </summary>
public static class AdapterModules
{
    /// <summary>
    /// The module paths shared by every adapter, in order; throws <see cref="CopaInputException"/>
    /// naming the adapter and module when the sets or the shapes differ.
    /// </summary>
    public static IReadOnlyList<string> Plan(IReadOnlyList<LoraAdapter> adapters)
    {
        if (adapters.Count == 0) throw new CopaInputException(null, null, "at least one adapter is needed");
        var first = adapters[0];
        for (int n = 1; n < adapters.Count; n++)
        {
            var other = adapters[n];
            foreach (var m in first.Modules)
            {
                if (!other.TryGetModule(m.Path, out var o))
                    throw new CopaInputException(other.Folder, m.Path, $"module is in {first.Folder} but not in this adapter; every adapter must target the same modules");
                if (o.DOut != m.DOut || o.DIn != m.DIn)
                    throw new CopaInputException(other.Folder, m.Path, $"module is {o.DOut} × {o.DIn} here but {m.DOut} × {m.DIn} in {first.Folder}");
            }
            foreach (var o in other.Modules)
                if (!first.TryGetModule(o.Path, out _))
                    throw new CopaInputException(other.Folder, o.Path, $"module is not in {first.Folder}; every adapter must target the same modules");
        }
        return adapters[0].Modules.Select(m => m.Path).ToList();
    }

    /// <summary>Reads one module of every adapter as F32, into arrays the caller owns (a merge leaves them as they are).</summary>
    public static ModuleInput Load(IReadOnlyList<LoraAdapter> adapters, string path) =>
        Load(adapters, path, n => GC.AllocateUninitializedArray<float>(n)) with { Factors = Factors.FactorSet.CallerArrays(adapters.Count) };

    /// <summary>
    /// Reads one module of every adapter as F32 into arrays from <paramref name="allocate"/> (exact
    /// lengths), which belong to the merge; with <paramref name="defer"/> the arrays are only allocated,
    /// and the module's <see cref="ModuleInput.Factors"/> reads each on demand.
    /// </summary>
    internal static ModuleInput Load(IReadOnlyList<LoraAdapter> adapters, string path, Func<int, float[]> allocate, bool defer = false)
    {
        var tasks = new List<TaskFactors>(adapters.Count);
        int dOut = 0, dIn = 0;
        foreach (var adapter in adapters)
        {
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
            tasks.Add(new TaskFactors(a, b, m.Rank, m.Scale, m.Alpha));
        }
        return new ModuleInput(path, dOut, dIn, tasks)
        {
            Factors = defer ? Factors.FactorSet.InFiles(adapters, path, tasks) : Factors.FactorSet.OwnArrays(tasks.Count),
        };
    }
}
