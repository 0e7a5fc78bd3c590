using CopaKernels.Formats;
using System.Runtime.InteropServices;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;

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

    /// <summary>Reads one module of every adapter as F32.</summary>
    public static ModuleInput Load(IReadOnlyList<LoraAdapter> adapters, string path) => Load(adapters, path, n => GC.AllocateUninitializedArray<float>(n));

    /// <summary>
    /// Reads one module of every adapter as F32 into arrays from <paramref name="allocate"/> (exact
    /// lengths); with <paramref name="defer"/> the arrays are only allocated, and the module's
    /// <see cref="ModuleInput.Deferred"/> reads them on demand.
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
        var input = new ModuleInput(path, dOut, dIn, tasks);
        return defer ? input with { Deferred = new DeferredFactors(adapters, path, tasks) } : input;
    }
}

/// <summary>
/// A module's factors that are allocated but not read yet: each is read (and decoded to F32) when a
/// method asks for it, so the thread that trims a factor reads it too, and it is still in cache.
/// </summary>
internal sealed class DeferredFactors(IReadOnlyList<LoraAdapter> adapters, string path, IReadOnlyList<TaskFactors> tasks)
{
    private readonly int[] _read = new int[2 * tasks.Count];

    /// <summary>Reads one factor into its array, once; each factor must be asked for by one thread at a time.</summary>
    public void Read(int task, bool b)
    {
        if (Interlocked.Exchange(ref _read[2 * task + (b ? 1 : 0)], 1) == 1) return;
        var (file, tensor) = Weights(task, b);
        file.ReadSingles(tensor, 0, b ? tasks[task].B : tasks[task].A);
    }

    /// <summary>The factor's storage format when it is stored as BF16 or F16 and not read yet (see <see cref="ReadRaw"/>), else null.</summary>
    public Float16Format? RawFormat(int task, bool b)
    {
        if (Volatile.Read(ref _read[2 * task + (b ? 1 : 0)]) == 1) return null;
        return Float16Formats.Of(Weights(task, b).Tensor.DType);
    }

    /// <summary>
    /// Reads one BF16/F16 factor's stored bits into <paramref name="into"/> (exactly its length) and marks
    /// it read: the caller widens them into the factor's array after working on them (a trim selects on
    /// the 16-bit keys themselves, at half the bytes of F32).
    /// </summary>
    public void ReadRaw(int task, bool b, Span<ushort> into)
    {
        if (Interlocked.Exchange(ref _read[2 * task + (b ? 1 : 0)], 1) == 1)
            throw new InvalidOperationException($"factor {(b ? "B" : "A")} of task {task} of {path} was read already");
        var (file, tensor) = Weights(task, b);
        file.ReadBytes(tensor, 0, MemoryMarshal.AsBytes(into));
    }

    private (SafetensorsFile Weights, TensorInfo Tensor) Weights(int task, bool b)
    {
        var adapter = adapters[task];
        if (!adapter.TryGetModule(path, out var m))
            throw new CopaInputException(adapter.Folder, path, "module not found in this adapter");
        return (adapter.Weights, b ? m.B : m.A);
    }

    /// <summary>Reads every factor not read yet.</summary>
    public void ReadAll()
    {
        for (int task = 0; task < tasks.Count; task++)
        {
            Read(task, false);
            Read(task, true);
        }
    }
}
