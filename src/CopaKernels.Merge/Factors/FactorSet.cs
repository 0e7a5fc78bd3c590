using System.Runtime.InteropServices;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Formats;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Merge.Factors;

/// <summary>Where one LoRA factor's values are.</summary>
internal enum FactorHome
{
    /// <summary>F32 in the caller's array, which a merge must leave as it is.</summary>
    CallerArray,

    /// <summary>F32 in an array that belongs to this merge alone, which a step may change in place.</summary>
    OwnArray,

    /// <summary>Still in the adapter file: its array is allocated but not read.</summary>
    File,

    /// <summary>
    /// Its stored 16-bit values, trimmed, in the first half of its own array's bytes (the array is the
    /// F32 one it was never widened into: the host route keeps BF16/F16 factors at 2 bytes a value).
    /// </summary>
    Bits16,
}

/// <summary>
/// Where every factor of one module is (<see cref="FactorHome"/>), and the reads that move a factor
/// from its adapter file into its array. The factor arrays themselves are the module's
/// <see cref="TaskFactors"/>; this tracks what their contents are.
/// </summary>
/// <remarks>
/// A factor is read from the file at most once, by one thread; different factors may be read and
/// moved by different threads at once (each has its own state word). A route's trims read each factor
/// on the thread that trims it, right before, so it is still in cache when the trim passes run.
/// </remarks>
internal sealed class FactorSet
{
    private readonly int[] _home;
    private readonly IReadOnlyList<LoraAdapter>? _adapters;
    private readonly string? _path;
    private readonly IReadOnlyList<TaskFactors>? _tasks;

    private FactorSet(int tasks, FactorHome home, IReadOnlyList<LoraAdapter>? adapters = null, string? path = null,
        IReadOnlyList<TaskFactors>? taskFactors = null)
    {
        _home = new int[2 * tasks];
        Array.Fill(_home, (int)home);
        _adapters = adapters;
        _path = path;
        _tasks = taskFactors;
    }

    /// <summary>Factors in a caller's F32 arrays, which a merge copies before changing.</summary>
    public static FactorSet CallerArrays(int tasks) => new(tasks, FactorHome.CallerArray);

    /// <summary>Factors in F32 arrays that belong to this merge alone.</summary>
    public static FactorSet OwnArrays(int tasks) => new(tasks, FactorHome.OwnArray);

    /// <summary>Factors still in the adapters' files, each to be read into its (allocated) array in <paramref name="tasks"/>.</summary>
    public static FactorSet InFiles(IReadOnlyList<LoraAdapter> adapters, string path, IReadOnlyList<TaskFactors> tasks) =>
        new(tasks.Count, FactorHome.File, adapters, path, tasks);

    /// <summary>Where factor A (or B) of task <paramref name="task"/> is now.</summary>
    public FactorHome Home(int task, bool b) => (FactorHome)Volatile.Read(ref _home[Index(task, b)]);

    /// <summary>Whether the arrays are this merge's own (never a caller's), so a step may change them in place.</summary>
    public bool Owned => (FactorHome)_home[0] != FactorHome.CallerArray;

    /// <summary>Whether any factor is still in its file.</summary>
    public bool AnyInFile
    {
        get
        {
            for (int i = 0; i < _home.Length; i++)
                if (Volatile.Read(ref _home[i]) == (int)FactorHome.File) return true;
            return false;
        }
    }

    /// <summary>The 16-bit format a factor is stored in when it is still in its file as BF16 or F16, else null.</summary>
    public DType? StoredFormat(int task, bool b) =>
        Home(task, b) == FactorHome.File ? Tensor(task, b).Tensor.DType.As16BitFloat() : null;

    /// <summary>The one 16-bit format every factor is stored in when every factor is still in its file, else null.</summary>
    public DType? CommonStoredFormat
    {
        get
        {
            DType? common = null;
            for (int factor = 0; factor < _home.Length; factor++)
            {
                if (StoredFormat(factor >> 1, (factor & 1) == 1) is not { } f || (common is { } c && c != f)) return null;
                common = f;
            }
            return common;
        }
    }

    /// <summary>Reads a factor still in its file into its array as F32 (it is then <see cref="FactorHome.OwnArray"/>); does nothing otherwise.</summary>
    public void ReadF32(int task, bool b)
    {
        if (Interlocked.CompareExchange(ref _home[Index(task, b)], (int)FactorHome.OwnArray, (int)FactorHome.File) != (int)FactorHome.File) return;
        var (file, tensor) = Tensor(task, b);
        file.ReadSingles(tensor, 0, b ? _tasks![task].B : _tasks![task].A);
    }

    /// <summary>
    /// Makes every factor's F32 values available in its array, for a step that reads the arrays: reads
    /// those still in their files; throws if one was kept as 16-bit bits (its F32 array was never filled).
    /// </summary>
    public void RequireF32()
    {
        ReadAllF32();
        for (int i = 0; i < _home.Length; i++)
            if (Volatile.Read(ref _home[i]) == (int)FactorHome.Bits16)
                throw new InvalidOperationException($"factor {((i & 1) == 1 ? "B" : "A")} of task {i >> 1} of {_path} is kept as 16-bit values, not F32");
    }

    /// <summary>Reads every factor still in its file, as F32.</summary>
    public void ReadAllF32()
    {
        for (int task = 0; task < _home.Length / 2; task++)
        {
            ReadF32(task, false);
            ReadF32(task, true);
        }
    }

    /// <summary>
    /// Reads a BF16/F16 factor's stored bits into <paramref name="into"/> (exactly its length), for a step
    /// that works on them before it decides where the factor goes: it must then say so with
    /// <see cref="Widened"/> or <see cref="KeptAsBits16"/>.
    /// </summary>
    public void ReadStored(int task, bool b, Span<ushort> into)
    {
        if (Home(task, b) != FactorHome.File)
            throw new InvalidOperationException($"factor {(b ? "B" : "A")} of task {task} of {_path} is not in its file any more");
        var (file, tensor) = Tensor(task, b);
        file.ReadBytes(tensor, 0, MemoryMarshal.AsBytes(into));
    }

    /// <summary>The factor read with <see cref="ReadStored"/> is now F32 in its array.</summary>
    public void Widened(int task, bool b) => Volatile.Write(ref _home[Index(task, b)], (int)FactorHome.OwnArray);

    /// <summary>The factor read with <see cref="ReadStored"/> is now kept, trimmed, as 16-bit bits in the first half of its array.</summary>
    public void KeptAsBits16(int task, bool b) => Volatile.Write(ref _home[Index(task, b)], (int)FactorHome.Bits16);

    /// <summary>The first half of a factor's array seen as 16-bit values (where <see cref="FactorHome.Bits16"/> keeps them).</summary>
    public static Span<ushort> Bits16Of(float[] array, int length) => MemoryMarshal.Cast<float, ushort>(array.AsSpan())[..length];

    private static int Index(int task, bool b) => 2 * task + (b ? 1 : 0);

    private (ITensorFile File, TensorInfo Tensor) Tensor(int task, bool b)
    {
        if (_adapters is null) throw new InvalidOperationException("these factors are not in files");
        var adapter = _adapters[task];
        if (!adapter.TryGetModule(_path!, out var m))
            throw new CopaInputException(adapter.Folder, _path, "module not found in this adapter");
        return (adapter.Weights, b ? m.B : m.A);
    }
}
