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
/// Computed after the output data is written, while the written files are synced to disk (the runner calls
/// <see cref="Compute(string?, int, CancellationToken)"/> on another thread): that wait leaves the cores idle, so on a merge that syncs its
/// output (the default) the spectra mostly cost no wall time. Every core computes them (one module each). The tasks' factors are read back from the adapters; an adapter
/// output's merged factors are read back from the file just written (no copy is held during the merge); for a
/// model output, whose file holds W + ΔW, a copy of each chosen module's merged factors is kept as it is
/// merged. A dense merged ΔW (delta space) gets a note instead of a spectrum.
/// </remarks>
internal sealed class ModuleSpectra
{
    private readonly MergePlan _plan;
    private readonly HashSet<string> _chosen;
    private readonly Dictionary<string, Merged> _copies = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (int Rank, double Scale)> _written = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _notes = new(StringComparer.Ordinal);
    private long _busyTicks;

    private sealed record Merged(float[] B, float[] A, int Rank, double Scale);

    private const string DenseNote = "the merge gave a dense ΔW (delta space): its spectrum would need a dense SVD";

    public ModuleSpectra(MergePlan plan)
    {
        _plan = plan;
        _chosen = Choose(plan.Modules.Select(m => m.Path).ToList(), plan.Request.ReportSpectra).ToHashSet(StringComparer.Ordinal);
    }

    /// <summary>Whether the report gives this module's spectra.</summary>
    public bool Wants(string path) => _chosen.Contains(path);

    /// <summary>Whether any module was chosen.</summary>
    public bool Any => _chosen.Count > 0;

    /// <summary>CPU time spent computing, summed over the threads.</summary>
    public TimeSpan Busy => System.Diagnostics.Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _busyTicks));

    /// <summary>
    /// The modules of <paramref name="paths"/> a selection takes, in their order. <see cref="SpectraSelection.Few"/>:
    /// one module of each type (<see cref="TypeOf"/>, e.g. <c>q_proj</c>), from the middle layer it occurs
    /// in (the layer is the last number in the path), or its only module without a layer number. One per type
    /// keeps the default report's cost under the output's sync to disk (bench/RESULTS.md, issue #17).
    /// </summary>
    public static IReadOnlyList<string> Choose(IReadOnlyList<string> paths, SpectraSelection selection)
    {
        if (selection == SpectraSelection.None) return [];
        if (selection == SpectraSelection.All) return paths;
        var byType = new Dictionary<string, List<(int Layer, string Path)>>(StringComparer.Ordinal);
        foreach (var p in paths)
        {
            string type = TypeOf(p);
            if (!byType.TryGetValue(type, out var list)) byType[type] = list = new();
            list.Add((LayerOf(p) ?? -1, p));
        }
        var chosen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var list in byType.Values)
        {
            var layers = list.Select(x => x.Layer).Distinct().Order().ToList();
            chosen.Add(list.First(x => x.Layer == layers[layers.Count / 2]).Path);
        }
        return paths.Where(chosen.Contains).ToList();
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
    /// (adapter output), else a copy of them; a dense result gets a note. Only an adapter output's results
    /// come encoded (<see cref="LowRankResult.Encoded"/>), and those factors are written.
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
                _copies[m.Path] = new Merged((float[])lr.B.Clone(), (float[])lr.A.Clone(), lr.Rank, lr.Scale);
                break;
            default:
                _notes[m.Path] = DenseNote;
                break;
        }
    }

    /// <summary>
    /// The chosen modules' spectra in plan order, on <paramref name="threads"/> threads (null when none was
    /// chosen); <paramref name="writtenAdapter"/> is the adapter weights file just written (adapter output),
    /// which the merged factors are read back from.
    /// </summary>
    public IReadOnlyList<MergeReport.ModuleSpectrum>? Compute(string? writtenAdapter, int threads, CancellationToken ct)
    {
        if (!Any) return null;
        var modules = _plan.Modules.Where(m => Wants(m.Path)).ToArray();
        using var output = writtenAdapter != null && _written.Count > 0 ? SafetensorsFile.Open(writtenAdapter) : null;
        var result = new MergeReport.ModuleSpectrum[modules.Length];
        var one = new ParallelOptions { MaxDegreeOfParallelism = 1 };
        try
        {
            Parallel.For(0, modules.Length, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads), CancellationToken = ct }, i =>
            {
                long start = System.Diagnostics.Stopwatch.GetTimestamp();
                result[i] = Compute(modules[i], output, one);
                Interlocked.Add(ref _busyTicks, System.Diagnostics.Stopwatch.GetTimestamp() - start);
            });
        }
        finally { _copies.Clear(); }
        return result;
    }

    private MergeReport.ModuleSpectrum Compute(PlannedModule m, SafetensorsFile? output, ParallelOptions parallel)
    {
        var tasks = new List<IReadOnlyList<double>>(m.Adapters.Count);
        foreach (int n in m.Adapters)
        {
            var adapter = _plan.Adapters[n];
            if (!adapter.TryGetModule(m.Path, out var lm))
                throw new InvalidOperationException($"{m.Path} planned for adapter {n}, which lacks it");
            tasks.Add(FromFile(adapter.Weights, lm.B, lm.A, lm.Rank, lm.Scale, parallel));
        }
        IReadOnlyList<double>? merged = null;
        if (_copies.TryGetValue(m.Path, out var c) && c.Rank > 0) merged = Spectrum(c.B, c.A, c.Rank, c.Scale, parallel);
        else if (output != null && _written.TryGetValue(m.Path, out var w) && w.Rank > 0)
            merged = FromFile(output, output.Get(LoraAdapter.KeyB(m.Path, m.Embedding)), output.Get(LoraAdapter.KeyA(m.Path, m.Embedding)), w.Rank, w.Scale, parallel);
        return new MergeReport.ModuleSpectrum(m.Path, m.Adapters, tasks, merged, _notes.GetValueOrDefault(m.Path));
    }

    /// <summary>The spectrum of factors read from a file into pooled arrays (no garbage the size of a factor).</summary>
    private static double[] FromFile(ITensorFile file, TensorInfo b, TensorInfo a, int rank, double scale, ParallelOptions parallel)
    {
        int nb = checked((int)b.ElementCount), na = checked((int)a.ElementCount);
        var pool = System.Buffers.ArrayPool<float>.Shared;
        var (pb, pa) = (pool.Rent(nb), pool.Rent(na));
        try
        {
            file.ReadSingles(b, 0, pb.AsSpan(0, nb));
            file.ReadSingles(a, 0, pa.AsSpan(0, na));
            return Spectrum(pb.AsSpan(0, nb), pa.AsSpan(0, na), rank, scale, parallel);
        }
        finally
        {
            pool.Return(pb);
            pool.Return(pa);
        }
    }

    /// <summary>
    /// σ(scale·B·A), B of (length / rank) × rank and A of rank × (length / rank). An embedding's factors
    /// have the same shapes (its stored ΔW is (B·A)ᵀ, with the same σ).
    /// </summary>
    private static double[] Spectrum(ReadOnlySpan<float> b, ReadOnlySpan<float> a, int rank, double scale, ParallelOptions parallel)
    {
        var s = LowRankTruncation.SingularValues(b, a, b.Length / rank, rank, a.Length / rank, parallel);
        double f = Math.Abs(scale);
        for (int i = 0; i < s.Length; i++) s[i] *= f;
        return s;
    }
}
