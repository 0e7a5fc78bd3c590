using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// The report's singular-value spectra (the view of the CoPA paper's Fig. 2b): for the chosen modules, σ of
/// each task's update ΔW_n = s_n·B_n·A_n and of the merged update as written, each from its low-rank factors
/// by <see cref="LowRankTruncation.SingularValues"/>, never from the dense d_out × d_in matrix. An
/// embedding's update is stored transposed, which leaves σ unchanged.
/// </summary>
/// <remarks>
/// <para>The tasks' spectra need only the adapters, so they start with the stream, on one background thread at
/// the lowest priority the system has (<see cref="IdlePriority"/>): it runs only on a core the merge leaves
/// idle, and reads the adapters through handles of its own, so the stream's read counts stay the merge's.
/// Whatever it has not done when the output data is written is done then, on every core, while the written
/// files are synced to disk (the runner calls <see cref="Compute(string?, int, CancellationToken)"/> on another
/// thread), together with the merged updates' spectra; nothing waits for the background thread.</para>
/// <para>An adapter output's merged factors are read back from the file just written (no copy is held during
/// the merge; handing copies to the background thread during the stream measured no faster, bench/RESULTS.md).
/// A model output's file holds W + ΔW, so there the merged spectrum is taken as each chosen module is merged,
/// from the factors in hand, and nothing is kept but its σ. A dense merged ΔW (delta space) gets a note
/// instead of a spectrum.</para>
/// </remarks>
internal sealed class ModuleSpectra : IDisposable
{
    private readonly MergePlan _plan;
    private readonly HashSet<string> _chosen;
    private readonly PlannedModule[] _modules;
    private readonly IReadOnlyList<double>[]?[] _tasks;
    private readonly TaskFactors[][] _factors;
    private readonly Dictionary<string, double[]> _mergedNow = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (int Rank, double Scale)> _written = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _notes = new(StringComparer.Ordinal);
    private Thread? _early;
    private volatile bool _stopEarly;
    private long _busyTicks;

    /// <summary>One task's factors of a chosen module, as the plan found them (the background thread needs no more of the plan).</summary>
    private sealed record TaskFactors(int Adapter, string File, TensorInfo B, TensorInfo A, int Rank, double Scale);

    private const string DenseNote = "the merge gave a dense ΔW (delta space): its spectrum would need a dense SVD";

    public ModuleSpectra(MergePlan plan)
    {
        _plan = plan;
        _chosen = Choose(plan.Modules.Select(m => m.Path).ToList(), plan.Request.ReportSpectra).ToHashSet(StringComparer.Ordinal);
        _modules = plan.Modules.Where(m => _chosen.Contains(m.Path)).ToArray();
        _tasks = new IReadOnlyList<double>[]?[_modules.Length];
        _factors = new TaskFactors[_modules.Length][];
        for (int i = 0; i < _modules.Length; i++)
        {
            var m = _modules[i];
            _factors[i] = new TaskFactors[m.Adapters.Count];
            for (int t = 0; t < m.Adapters.Count; t++)
            {
                var adapter = plan.Adapters[m.Adapters[t]];
                if (!adapter.TryGetModule(m.Path, out var lm))
                    throw new InvalidOperationException($"{m.Path} planned for adapter {m.Adapters[t]}, which lacks it");
                _factors[i][t] = new TaskFactors(m.Adapters[t], adapter.Weights.Path, lm.B, lm.A, lm.Rank, lm.Scale);
            }
        }
    }

    /// <summary>Whether the report gives this module's spectra.</summary>
    public bool Wants(string path) => _chosen.Contains(path);

    /// <summary>Whether any module was chosen.</summary>
    public bool Any => _modules.Length > 0;

    /// <summary>CPU time spent computing, summed over the threads.</summary>
    public TimeSpan Busy => System.Diagnostics.Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _busyTicks));

    private static readonly AsyncLocal<Action?> s_beforeEarlyModule = new();

    /// <summary>
    /// Test hook: called on the background thread before each module it takes (a starved thread: one that
    /// blocks there). Local to the setting test's flow, which the thread inherits.
    /// </summary>
    internal static Action? BeforeEarlyModule
    {
        get => s_beforeEarlyModule.Value;
        set => s_beforeEarlyModule.Value = value;
    }

    /// <summary>Starts the background thread that takes the tasks' spectra at idle priority (once; not when no module was chosen).</summary>
    public void StartEarly()
    {
        if (!Any || _early != null) return;
        _early = new Thread(EarlyLoop) { IsBackground = true, Name = "copa report (idle)" };
        _early.Start();
    }

    private void EarlyLoop()
    {
        IdlePriority.LowerCurrentThread();
        var own = new Dictionary<int, ITensorFile>();
        try
        {
            for (int i = 0; i < _modules.Length && !_stopEarly; i++)
            {
                if (Volatile.Read(ref _tasks[i]) != null) continue;
                BeforeEarlyModule?.Invoke();
                var cpu = IdlePriority.ThreadCpuTime();
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                try { Interlocked.CompareExchange(ref _tasks[i], Tasks(i, own), null); }
                catch (Exception) { }   // left for Compute, which takes it again and lets its error surface
                long ticks = IdlePriority.ThreadCpuTime() is { } end && cpu is { } begin
                    ? (long)((end - begin).TotalSeconds * System.Diagnostics.Stopwatch.Frequency)
                    : System.Diagnostics.Stopwatch.GetTimestamp() - start;
                Interlocked.Add(ref _busyTicks, ticks);
            }
        }
        finally
        {
            // An exception that left this thread would end the process: closing a read-only handle has nothing to report.
            foreach (var f in own.Values)
            {
                try { f.Dispose(); }
                catch (Exception) { }
            }
        }
    }

    /// <summary>
    /// Stops the background thread after the module it is on, without waiting for it: on a machine whose cores
    /// other work keeps busy, an idle-priority thread may not run for a long while (and an unprivileged process
    /// cannot lift it back from SCHED_IDLE). It reads through handles of its own and needs nothing of the plan,
    /// so it may end after the merge; what it was on, <see cref="Compute"/> takes as well.
    /// </summary>
    public void Dispose() => _stopEarly = true;

    /// <summary>
    /// The modules of <paramref name="paths"/> a selection takes, in their order. <see cref="SpectraSelection.Few"/>:
    /// of each module type (<see cref="TypeOf"/>, e.g. <c>q_proj</c>), the modules in the first, the middle and
    /// the last layer it occurs in (the layer is the last number in the path; a type without layer numbers
    /// gives its first module): where a spectrum changes with depth, the ends and the middle show it.
    /// </summary>
    public static IReadOnlyList<string> Choose(IReadOnlyList<string> paths, SpectraSelection selection)
    {
        if (selection == SpectraSelection.None) return [];
        if (selection == SpectraSelection.All) return paths;
        // Per type, its distinct layers ascending (a module without one counts as layer −1) and the first module
        // of each; plain loops, as the report's code runs once per process.
        var byType = new Dictionary<string, (List<int> Layers, List<string> Paths)>(StringComparer.Ordinal);
        foreach (var p in paths)
        {
            string type = TypeOf(p);
            if (!byType.TryGetValue(type, out var t)) byType[type] = t = (new List<int>(), new List<string>());
            if (InsertLayer(t.Layers, LayerOf(p) ?? -1) is var at and >= 0) t.Paths.Insert(at, p);
        }
        var chosen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (_, t) in byType)
        {
            chosen.Add(t.Paths[0]);
            chosen.Add(t.Paths[t.Paths.Count / 2]);
            chosen.Add(t.Paths[^1]);
        }
        var result = new List<string>(chosen.Count);
        foreach (var p in paths) if (chosen.Remove(p)) result.Add(p);
        return result;
    }

    /// <summary>
    /// Adds <paramref name="layer"/> to the ascending, distinct <paramref name="layers"/>: where it went, or −1
    /// when it was there already (a model has tens of layers: a scan is enough).
    /// </summary>
    public static int InsertLayer(List<int> layers, int layer)
    {
        int at = 0;
        while (at < layers.Count && layers[at] < layer) at++;
        if (at < layers.Count && layers[at] == layer) return -1;
        layers.Insert(at, layer);
        return at;
    }

    /// <summary>
    /// The module type of a path: its last part that is not a number (<c>model.layers.7.mlp.up_proj</c> →
    /// <c>up_proj</c>, <c>model.mm_projector.2</c> → <c>mm_projector</c>).
    /// </summary>
    public static string TypeOf(string path)
    {
        var parts = path.Split('.');
        for (int i = parts.Length - 1; i >= 0; i--)
            if (!(parts[i].Length > 0 && parts[i].All(char.IsAsciiDigit))) return parts[i];
        return path;
    }

    /// <summary>The layer index of a module path: its last all-digit part (<c>model.layers.7.mlp.up_proj</c> → 7).</summary>
    public static int? LayerOf(string path)
    {
        var parts = path.Split('.');
        for (int i = parts.Length - 1; i >= 0; i--)
            if (parts[i].Length is > 0 and < 10 && parts[i].All(char.IsAsciiDigit)) return int.Parse(parts[i], System.Globalization.CultureInfo.InvariantCulture);
        return null;
    }

    /// <summary>
    /// Notes a chosen module's merged result: its rank and scale where the output file will hold the factors
    /// (adapter output), else its spectrum, taken now from the factors in hand (a model output's file holds
    /// W + ΔW); a dense result gets a note. Only an adapter output's results come encoded
    /// (<see cref="LowRankResult.Encoded"/>), and those factors are written. Called by the runner, one module at
    /// a time, before <see cref="Compute"/>.
    /// </summary>
    public void Capture(PlannedModule m, ModuleResult result)
    {
        if (!Wants(m.Path)) return;
        switch (result)
        {
            case LowRankResult lr when _plan.Request.Mode == OutputMode.Adapter:
                _written[m.Path] = (lr.Rank, lr.Scale);
                break;
            case LowRankResult lr:
                // Factors that overflowed fail the merge where they are encoded, with the error that names them.
                if (Formats.Numerics.NonFinite.Any(lr.B) || Formats.Numerics.NonFinite.Any(lr.A)) break;
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                var sigma = lr.Rank > 0 ? Spectrum(lr.B, lr.A, lr.Rank, lr.Scale) : [];
                Interlocked.Add(ref _busyTicks, System.Diagnostics.Stopwatch.GetTimestamp() - start);
                _mergedNow[m.Path] = sigma;
                break;
            default:
                _notes[m.Path] = DenseNote;
                break;
        }
    }

    private static readonly ParallelOptions Serial = new() { MaxDegreeOfParallelism = 1 };

    /// <summary>Gram blocks of A's columns read at once: fewer, longer reads (rank × 4 blocks of floats, 512 KB at rank 128).</summary>
    private const int ReadBlocks = 4;

    /// <summary>
    /// The chosen modules' spectra in plan order, on <paramref name="threads"/> threads (null when none was
    /// chosen): the tasks' that the background thread has not taken, and the merged updates';
    /// <paramref name="writtenAdapter"/> is the adapter weights file just written (adapter output), which the
    /// merged factors are read back from.
    /// </summary>
    public IReadOnlyList<MergeReport.ModuleSpectrum>? Compute(string? writtenAdapter, int threads, CancellationToken ct)
    {
        if (!Any) return null;
        // What the background thread has not finished, every core takes now (the module it may be on included:
        // whichever ends first gives the result, and both give the same).
        Dispose();
        using var output = writtenAdapter != null && _written.Count > 0 ? SafetensorsFile.Open(writtenAdapter) : null;
        var merged = new IReadOnlyList<double>?[_modules.Length];
        Parallel.For(0, _modules.Length, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads), CancellationToken = ct }, i =>
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            if (Volatile.Read(ref _tasks[i]) == null)
            {
                try { Interlocked.CompareExchange(ref _tasks[i], Tasks(i, own: null), null); }
                catch (Exception) when (Volatile.Read(ref _tasks[i]) != null) { }
            }
            merged[i] = Merged(_modules[i], output);
            Interlocked.Add(ref _busyTicks, System.Diagnostics.Stopwatch.GetTimestamp() - start);
        });
        var result = new MergeReport.ModuleSpectrum[_modules.Length];
        for (int i = 0; i < _modules.Length; i++)
        {
            var tasks = Volatile.Read(ref _tasks[i])!;
            result[i] = new MergeReport.ModuleSpectrum(_modules[i].Path, _modules[i].Adapters, tasks, merged[i], _notes.GetValueOrDefault(_modules[i].Path));
        }
        return result;
    }

    /// <summary>
    /// The tasks' spectra of a module, read through the plan's handles, or, given <paramref name="own"/>, through
    /// handles of the caller's own (opened on first use, kept in it), which must find the same tensors.
    /// </summary>
    private IReadOnlyList<double>[] Tasks(int module, Dictionary<int, ITensorFile>? own)
    {
        var factors = _factors[module];
        var tasks = new IReadOnlyList<double>[factors.Length];
        for (int t = 0; t < tasks.Length; t++)
        {
            var f = factors[t];
            if (own == null)
            {
                tasks[t] = FromFile(_plan.Adapters[f.Adapter].Weights, f.B, f.A, f.Rank, f.Scale);
                continue;
            }
            if (!own.TryGetValue(f.Adapter, out var file)) own[f.Adapter] = file = TensorFiles.Open(f.File);
            tasks[t] = FromFile(file, Same(file, f.B), Same(file, f.A), f.Rank, f.Scale);
        }
        return tasks;
    }

    /// <summary>The tensor of <paramref name="file"/> that is <paramref name="planned"/>: same name, type, shape and bytes.</summary>
    private static TensorInfo Same(ITensorFile file, TensorInfo planned) =>
        file.TryGet(planned.Name, out var t) && t.DType == planned.DType && t.Begin == planned.Begin && t.End == planned.End
            && t.Shape.AsSpan().SequenceEqual(planned.Shape)
            ? t
            : throw new InvalidOperationException($"{file.Path}: {planned.Name} is not the tensor planned");

    private IReadOnlyList<double>? Merged(PlannedModule m, SafetensorsFile? output)
    {
        if (_mergedNow.TryGetValue(m.Path, out var now)) return now.Length > 0 ? now : null;
        if (output != null && _written.TryGetValue(m.Path, out var w) && w.Rank > 0)
            return FromFile(output, output.Get(LoraAdapter.KeyB(m.Path, m.Embedding)), output.Get(LoraAdapter.KeyA(m.Path, m.Embedding)), w.Rank, w.Scale);
        return null;
    }

    /// <summary>
    /// The spectrum of factors in a file, their Gram matrices accumulated block by block as they are read
    /// (<see cref="LowRankTruncation.Gram(int, int, LowRankTruncation.GramFill)"/>), so that no factor is held
    /// whole: a rank-128 pair of an 11008-wide module is 7.5 MB, its blocks a few hundred KB. Only where a Gram
    /// matrix is singular (dependent factors, which Householder must decide) are the factors read whole.
    /// </summary>
    internal static unsafe double[] FromFile(ITensorFile file, TensorInfo b, TensorInfo a, int rank, double scale)
    {
        int dOut = checked((int)(b.ElementCount / rank)), dIn = checked((int)(a.ElementCount / rank));
        // A is read a few blocks of columns at a time (one read per row each), B a block of rows at a time.
        int block = LowRankTruncation.GramBlock(rank), wide = ReadBlocks * block;
        var scratch = System.Buffers.ArrayPool<float>.Shared.Rent(wide * rank);
        double[]? gB = null, gA = null;
        bool finite;
        double[]? sigma;
        try
        {
            fixed (float* ps = scratch)
            {
                nint at = (nint)ps;
                // B, d_out × R: a block is whole rows, read at once.
                (gB, finite) = LowRankTruncation.Gram(rank, dOut, (start, width, rows, stride) =>
                {
                    file.ReadSingles(b, (long)start * rank, new Span<float>((float*)at, width * rank));
                    return LowRankTruncation.WidenRows((float*)at, rank, width, rows, stride);
                });
                // A, R × d_in: columns [held, held + width) of every row sit in the scratch, row k at k·wide.
                int held = -1;
                (gA, bool finiteA) = LowRankTruncation.Gram(rank, dIn, (start, width, rows, stride) =>
                {
                    if (held < 0 || start + width > held + wide)
                    {
                        held = start;
                        int run = Math.Min(wide, dIn - start);
                        for (int k = 0; k < rank; k++) file.ReadSingles(a, (long)k * dIn + start, new Span<float>((float*)at + (long)k * wide, run));
                    }
                    return LowRankTruncation.WidenColumns((float*)at + (start - held), wide, rank, width, rows, stride);
                });
                finite &= finiteA;
            }
            if (!finite) throw new ArgumentException($"{file.Path}: {b.Name} or {a.Name} holds a non-finite value");
            sigma = LowRankTruncation.FromGrams(gB, gA, dOut, rank, dIn, Serial);
        }
        finally
        {
            System.Buffers.ArrayPool<float>.Shared.Return(scratch);
            if (gB != null) System.Buffers.ArrayPool<double>.Shared.Return(gB);
            if (gA != null) System.Buffers.ArrayPool<double>.Shared.Return(gA);
        }
        return Scaled(sigma ?? LowRankTruncation.SingularValues(file.ReadSingles(b), file.ReadSingles(a), dOut, rank, dIn, Serial), scale);
    }

    /// <summary>
    /// σ(scale·B·A), B of (length / rank) × rank and A of rank × (length / rank). An embedding's factors
    /// have the same shapes (its stored ΔW is (B·A)ᵀ, with the same σ).
    /// </summary>
    private static double[] Spectrum(ReadOnlySpan<float> b, ReadOnlySpan<float> a, int rank, double scale) =>
        Scaled(LowRankTruncation.SingularValues(b, a, b.Length / rank, rank, a.Length / rank, Serial), scale);

    /// <summary>σ(scale·B·A) = |scale|·σ(B·A), in place.</summary>
    private static double[] Scaled(double[] sigma, double scale)
    {
        double f = Math.Abs(scale);
        for (int i = 0; i < sigma.Length; i++) sigma[i] *= f;
        return sigma;
    }
}
