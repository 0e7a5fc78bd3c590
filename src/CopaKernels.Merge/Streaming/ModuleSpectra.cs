using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// The report's singular-value spectra (the view of the CoPA paper's Fig. 2b): for the chosen modules, σ of
/// each task's update ΔW_n = s_n·B_n·A_n and of the merged update as written, each from its low-rank factors
/// by <see cref="LowRankTruncation.SingularValues"/> (QR of both factors and an SVD of the R×R core, in
/// double), never from the dense d_out × d_in matrix. An embedding's update is stored transposed, which
/// leaves σ unchanged.
/// </summary>
/// <remarks>
/// The merged factors of the chosen modules are copied as the merge produces them (a few modules, a few MB);
/// the tasks' factors are read back from the adapters, and every decomposition runs after the output data is
/// written, so the spectra add to the end of the run and never to the merge's own memory plan.
/// </remarks>
internal sealed class ModuleSpectra
{
    private readonly MergePlan _plan;
    private readonly HashSet<string> _chosen;
    private readonly Dictionary<string, Merged> _merged = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _notes = new(StringComparer.Ordinal);

    private sealed record Merged(float[] B, float[] A, int Rank, double Scale);

    public ModuleSpectra(MergePlan plan)
    {
        _plan = plan;
        _chosen = Choose(plan.Modules.Select(m => m.Path).ToList(), plan.Request.ReportSpectra).ToHashSet(StringComparer.Ordinal);
    }

    /// <summary>Whether the report gives this module's spectra.</summary>
    public bool Wants(string path) => _chosen.Contains(path);

    /// <summary>
    /// The modules of <paramref name="paths"/> a selection takes, in their order. <see cref="SpectraSelection.Few"/>:
    /// for each module type (the last part of the path, e.g. <c>q_proj</c>) the first, middle and last layer it
    /// occurs in (the layer is the last number in the path); a type without layer numbers gives its first module.
    /// </summary>
    public static IReadOnlyList<string> Choose(IReadOnlyList<string> paths, SpectraSelection selection)
    {
        if (selection == SpectraSelection.None) return [];
        if (selection == SpectraSelection.All) return paths;
        var byType = new Dictionary<string, List<(int Layer, string Path)>>(StringComparer.Ordinal);
        foreach (var p in paths)
        {
            string type = p[(p.LastIndexOf('.') + 1)..];
            if (!byType.TryGetValue(type, out var list)) byType[type] = list = new();
            list.Add((LayerOf(p) ?? -1, p));
        }
        var chosen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var list in byType.Values)
        {
            var layers = list.Select(x => x.Layer).Distinct().Order().ToList();
            foreach (int layer in new[] { layers[0], layers[layers.Count / 2], layers[^1] })
                chosen.Add(list.First(x => x.Layer == layer).Path);
        }
        return paths.Where(chosen.Contains).ToList();
    }

    /// <summary>The layer index of a module path: its last all-digit part (<c>model.layers.7.mlp.up_proj</c> → 7).</summary>
    public static int? LayerOf(string path)
    {
        var parts = path.Split('.');
        for (int i = parts.Length - 1; i >= 0; i--)
            if (parts[i].Length is > 0 and < 10 && parts[i].All(char.IsAsciiDigit)) return int.Parse(parts[i], System.Globalization.CultureInfo.InvariantCulture);
        return null;
    }

    /// <summary>Keeps a copy of a chosen module's merged result (the caller's arrays go back to the pool).</summary>
    public void Capture(PlannedModule m, ModuleResult result)
    {
        if (!Wants(m.Path)) return;
        switch (result)
        {
            case LowRankResult { Encoded: { } e } lr:
                _merged[m.Path] = new Merged(Decode(e.DType, e.B, e.BLength), Decode(e.DType, e.A, e.ALength), lr.Rank, lr.Scale);
                break;
            case LowRankResult lr:
                _merged[m.Path] = new Merged((float[])lr.B.Clone(), (float[])lr.A.Clone(), lr.Rank, lr.Scale);
                break;
            default:
                _notes[m.Path] = "the merge gave a dense ΔW (delta space): its spectrum would need a dense SVD";
                break;
        }
    }

    private static float[] Decode(DType dtype, byte[] bytes, int length)
    {
        var values = new float[length / dtype.Size()];
        ElementCodec.Decode(dtype, bytes.AsSpan(0, length), values);
        return values;
    }

    /// <summary>The spectra of the chosen modules, in plan order (null when none was chosen).</summary>
    public IReadOnlyList<MergeReport.ModuleSpectrum>? Compute(ParallelOptions parallel, CancellationToken ct)
    {
        if (_chosen.Count == 0) return null;
        var result = new List<MergeReport.ModuleSpectrum>(_chosen.Count);
        foreach (var m in _plan.Modules)
        {
            if (!_chosen.Contains(m.Path)) continue;
            ct.ThrowIfCancellationRequested();
            var tasks = new List<IReadOnlyList<double>>(m.Adapters.Count);
            foreach (int n in m.Adapters)
            {
                var adapter = _plan.Adapters[n];
                if (!adapter.TryGetModule(m.Path, out var lm))
                    throw new InvalidOperationException($"{m.Path} planned for adapter {n}, which lacks it");
                tasks.Add(Spectrum(adapter.Weights.ReadSingles(lm.B), adapter.Weights.ReadSingles(lm.A), lm.Rank, lm.Scale, parallel));
            }
            IReadOnlyList<double>? merged = null;
            if (_merged.TryGetValue(m.Path, out var r) && r.Rank > 0) merged = Spectrum(r.B, r.A, r.Rank, r.Scale, parallel);
            result.Add(new MergeReport.ModuleSpectrum(m.Path, m.Adapters, tasks, merged, _notes.GetValueOrDefault(m.Path)));
        }
        return result;
    }

    /// <summary>
    /// σ(scale·B·A), B of (length / rank) × rank and A of rank × (length / rank). An embedding's factors
    /// have the same shapes (its stored ΔW is (B·A)ᵀ, with the same σ).
    /// </summary>
    private static double[] Spectrum(float[] b, float[] a, int rank, double scale, ParallelOptions parallel)
    {
        var s = LowRankTruncation.SingularValues(b, a, b.Length / rank, rank, a.Length / rank, parallel);
        double f = Math.Abs(scale);
        for (int i = 0; i < s.Length; i++) s[i] *= f;
        return s;
    }
}
