using CopaKernels.Merge.Streaming;

namespace CopaKernels.Merge.Reporting;

/// <summary>
/// <c>merge_report.html</c>: the merge report drawn for people, from the <see cref="MergeReport"/> alone
/// (so <c>copa report merge_report.json</c> redraws it from the JSON): the summary, where the time and the
/// memory went, what each trim kept per layer and module, CoPA's complementary scales, the singular-value
/// spectra of the chosen modules, the energy a re-rank kept, and the throughput over time.
/// </summary>
public static class MergeReportHtml
{
    /// <summary>File name beside <see cref="MergeReport.FileName"/>.</summary>
    public const string FileName = "merge_report.html";

    /// <summary>The page, one self-contained HTML document.</summary>
    public static string Render(MergeReport report)
    {
        using var w = new StringWriter(System.Globalization.CultureInfo.InvariantCulture);
        Write(report, w);
        return w.ToString();
    }

    /// <summary>Writes the page to <paramref name="path"/> (UTF-8), as <see cref="Render"/> gives it, without building it as one string first.</summary>
    public static void Write(MergeReport report, string path)
    {
        using var w = new StreamWriter(path, append: false, new System.Text.UTF8Encoding(false), bufferSize: 1 << 16);
        Write(report, w);
    }

    private static void Write(MergeReport report, TextWriter w)
    {
        ArgumentNullException.ThrowIfNull(report);
        var page = new HtmlPage($"{report.Method} merge: {Path.GetFileName(report.Output.Path.TrimEnd('/'))}");
        Summary(page, report);
        Trims(page, report);
        Scales(page, report);
        Spectra(page, report);
        Energy(page, report);
        Throughput(page, report);
        page.P($"Written by {report.Tool} from merge_report.json (every number here is in it); finished {report.FinishedUtc:yyyy-MM-dd HH:mm:ss} UTC.");
        page.WriteTo(w);
    }

    private static void Summary(HtmlPage page, MergeReport r)
    {
        page.H2("Summary");
        var rows = new List<(string, string)>
        {
            ("method", r.Method),
            ("parameters", Parameters(r)),
        };
        for (int i = 0; i < r.Adapters.Count; i++) rows.Add(($"adapter {i}", $"{r.Adapters[i].Path} ({Bytes(r.Adapters[i].Bytes)})"));
        if (r.Base is { Count: > 0 } b) rows.Add(("base", $"{Path.GetDirectoryName(b[0].Path)} ({b.Count} shard{(b.Count == 1 ? "" : "s")}, {Bytes(b.Sum(x => x.Bytes))})"));
        rows.Add(("output", $"{r.Output.Path}: {r.Output.Mode}{(r.Output.Dtype is { } d ? ", " + d : "")}{(r.Output.Rank is { } k ? ", rank " + k : "")}, {r.Output.Tensors} tensors, {Bytes(r.Output.DataBytes)}"));
        rows.Add(("device", r.Device));
        var s = r.Summary;
        rows.Add(("modules", $"{s.Modules}; kept {Pct(s.Kept, s.Considered)} of {s.Considered:N0} entries considered by the trims and drops" +
            (s.ZeroDenominatorRows > 0 ? $"; {s.ZeroDenominatorRows} CoPA rows fell back to S = 1" : "")));
        page.Table(rows);

        var t = r.TimingsSeconds;
        var bars = new List<Svg.Bar>();
        void Add(string key, string label, string color)
        {
            if (t.TryGetValue(key, out double v)) bars.Add(new Svg.Bar(label, v, $"{v:0.###} s", color));
        }
        Add("plan", "plan", Svg.Color(8));
        Add("read", "read (input files)", Svg.Color(0));
        Add("merge_compute", "compute", Svg.Color(1));
        Add("write", "write (output files)", Svg.Color(2));
        Add("stream_total", "stream, wall", Svg.Color(7));
        Add("spectra", "spectra (CPU, all threads)", Svg.Color(3));
        var m = r.Memory;
        var mem = new List<Svg.Bar>
        {
            new("budget (--max-memory)", m.MaxMemory, Bytes(m.MaxMemory), Svg.Color(8)),
            new("plan estimate", m.EstimatedPeak, Bytes(m.EstimatedPeak), Svg.Color(0)),
            new("measured peak RSS", m.PeakRss, Bytes(m.PeakRss), m.PeakRss > m.MaxMemory ? Svg.Color(5) : Svg.Color(2)),
        };
        page.Charts([Svg.Bars("Time (s): read, compute and write overlap", bars), Svg.Bars("Memory", mem)]);
    }

    /// <summary>Layer × module-type grid of the modules: rows are layers (the last number in a path), columns the last path part.</summary>
    private sealed class Grid
    {
        public readonly List<string> Rows = new(), Cols = new();
        private readonly Dictionary<string, (int Row, int Col)> _at = new(StringComparer.Ordinal);

        public Grid(IEnumerable<string> paths)
        {
            var list = paths.ToList();
            // Distinct layers ascending, modules without one last (plain loops: see Svg.Lines).
            var layers = new List<int>();
            bool other = false;
            foreach (var p in list)
            {
                if (ModuleSpectra.LayerOf(p) is { } l) ModuleSpectra.InsertLayer(layers, l);
                else other = true;
            }
            foreach (int l in layers) Rows.Add(l.ToString(System.Globalization.CultureInfo.InvariantCulture));
            if (other) Rows.Add("other");
            foreach (var p in list)
            {
                string type = Type(p);
                if (!Cols.Contains(type)) Cols.Add(type);
                _at[p] = (ModuleSpectra.LayerOf(p) is { } l ? layers.IndexOf(l) : layers.Count, Cols.IndexOf(type));
            }
        }

        public double[,] Empty()
        {
            var v = new double[Rows.Count, Cols.Count];
            for (int i = 0; i < Rows.Count; i++) for (int j = 0; j < Cols.Count; j++) v[i, j] = double.NaN;
            return v;
        }

        public void Set(double[,] v, string path, double value)
        {
            var (row, col) = _at[path];
            v[row, col] = value;
        }
    }

    private static string Type(string path) => ModuleSpectra.TypeOf(path);

    private static void Trims(HtmlPage page, MergeReport r)
    {
        var mods = r.Modules.Where(m => m.KeptFractionA != null || m.KeptFractionB != null).ToList();
        if (mods.Count == 0) return;
        page.H2("What the trims kept, per layer and module");
        bool delta = mods.Any(m => m.Dense);
        page.P(delta
            ? "Each task's ΔW was trimmed or dropped on its own: the fraction of entries kept and, for a trim, the magnitude threshold t (entries with |x| ≥ t kept)."
            : "Each task's factors were trimmed or dropped on their own, A and B apart: the fraction of entries kept and, for a trim, the magnitude threshold t (entries with |x| ≥ t kept).");
        var grid = new Grid(r.Modules.Select(m => m.Path));
        for (int task = 0; task < r.Adapters.Count; task++)
        {
            var charts = new List<string>();
            foreach (bool a in new[] { true, false })
            {
                string side = delta ? "ΔW" : a ? "A" : "B";
                var kept = grid.Empty();
                var thr = grid.Empty();
                bool anyKept = false, anyThr = false;
                foreach (var m in mods)
                {
                    int at = TaskIndex(m, task);
                    if (at < 0) continue;
                    var fractions = a ? m.KeptFractionA : m.KeptFractionB;
                    var thresholds = a ? m.ThresholdsA : m.ThresholdsB;
                    if (fractions != null && at < fractions.Count) { grid.Set(kept, m.Path, fractions[at]); anyKept = true; }
                    if (at < thresholds.Count) { grid.Set(thr, m.Path, thresholds[at]); anyThr = true; }
                }
                if (anyKept) charts.Add(Svg.Heatmap($"kept fraction, {side}", grid.Rows, grid.Cols, kept, v => $"{100 * v:0.##} %", fixedLo: 0, fixedHi: 1));
                if (anyThr) charts.Add(Svg.Heatmap($"threshold t, {side}", grid.Rows, grid.Cols, thr, v => Svg.G(v), log: true));
                if (delta) break;
            }
            if (charts.Count == 0) continue;
            page.H3($"adapter {task}: {Path.GetFileName(Path.GetDirectoryName(r.Adapters[task].Path) ?? "")}");
            page.Charts(charts);
        }
    }

    /// <summary>Where task <paramref name="task"/> (an adapter index) sits in a module's per-task lists, or −1 when it lacks the module.</summary>
    private static int TaskIndex(MergeReport.ModuleReport m, int task)
    {
        if (m.Adapters == null) return task;
        for (int i = 0; i < m.Adapters.Count; i++) if (m.Adapters[i] == task) return i;
        return -1;
    }

    private static void Scales(HtmlPage page, MergeReport r)
    {
        var mods = r.Modules.Where(m => m.Scales != null).ToList();
        if (mods.Count == 0) return;
        page.H2("CoPA's complementary scales S");
        page.P("S_n[i] = Σ|A_n[i,:]| / Σ|Ã_n[i,:]| for each rank row i (after the clamp, before the normalisation across tasks): the line spans the module's smallest to largest S, the dot is the median. A row whose trimmed sum is 0 falls back to S = 1.");
        var series = new List<Svg.Series>();
        var charts = new List<string>();
        for (int task = 0; task < r.Adapters.Count; task++)
        {
            var med = new List<(double, double)>();
            var lo = new List<(double, double)>();
            var hi = new List<(double, double)>();
            for (int i = 0; i < mods.Count; i++)
            {
                int at = TaskIndex(mods[i], task);
                if (at < 0 || at >= mods[i].Scales!.Count) continue;
                var s = mods[i].Scales![at];
                med.Add((i, s.Median));
                lo.Add((i, s.Min));
                hi.Add((i, s.Max));
            }
            charts.Add(Svg.Lines($"adapter {task}: S per module (plan order)", "module", "S", [
                new Svg.Series("max", Svg.Color(task), hi, 0.8), new Svg.Series("median", Svg.Color(7), med, 1.2), new Svg.Series("min", Svg.Color(task), lo, 0.8)],
                logY: true, width: 460, height: 220));
        }
        page.Charts(charts);
        var fallback = mods.Where(m => m.Scales!.Any(s => s.FallbackRows > 0)).ToList();
        if (fallback.Count == 0) page.P("No row fell back to S = 1.");
        else
        {
            var header = new List<string> { "module" };
            for (int t = 0; t < r.Adapters.Count; t++) header.Add($"adapter {t}: rows at S = 1");
            var rows = new List<IReadOnlyList<string>>();
            foreach (var m in fallback)
            {
                var row = new List<string> { m.Path };
                for (int t = 0; t < r.Adapters.Count; t++)
                    row.Add(TaskIndex(m, t) is var at && at >= 0 ? m.Scales![at].FallbackRows.ToString(System.Globalization.CultureInfo.InvariantCulture) : "");
                rows.Add(row);
            }
            page.Grid(header, rows);
        }
    }

    private static void Spectra(HtmlPage page, MergeReport r)
    {
        if (r.Spectra is not { Count: > 0 } spectra) return;
        page.H2("Singular-value spectra");
        page.P("The exact singular values of each task's update ΔW_n = s_n·B_n·A_n and of the merged update as written, from the low-rank factors (QR and a core SVD, never the dense matrix), largest first, log scale.");
        var charts = new List<string>();
        foreach (var sp in spectra)
        {
            var series = new List<Svg.Series>();
            for (int i = 0; i < sp.Tasks.Count; i++)
                series.Add(new Svg.Series($"adapter {sp.Adapters[i]}", Svg.Color(sp.Adapters[i]), Points(sp.Tasks[i]), 1.2));
            if (sp.Merged != null) series.Add(new Svg.Series("merged", "#000000", Points(sp.Merged), 2.2));
            charts.Add(Svg.Lines(Svg.Short(sp.Path, 60) + (sp.Note != null ? " (tasks only)" : ""), "index i", "σ_i", series, logY: true, width: 400, height: 230));
        }
        page.Charts(charts);
        if (spectra.FirstOrDefault(s => s.Note != null) is { } noted) page.P($"Merged spectrum left out: {noted.Note}.");
    }

    private static IReadOnlyList<(double, double)> Points(IReadOnlyList<double> s)
    {
        var points = new List<(double, double)>(s.Count);
        for (int i = 0; i < s.Count; i++) points.Add((i + 1, s[i]));
        return points;
    }

    private static void Energy(HtmlPage page, MergeReport r)
    {
        var mods = r.Modules.Where(m => m.EnergyKept != null).ToList();
        if (mods.Count == 0) return;
        page.H2("Energy kept by the re-rank");
        page.P($"With an output rank N, each module keeps Σ_(i<N) σ_i² / Σ σ_i² of its merged update's energy (1 − the squared relative Frobenius error). Lowest: {Svg.G(mods.Min(m => m.EnergyKept!.Value))}.");
        var grid = new Grid(r.Modules.Select(m => m.Path));
        var v = grid.Empty();
        foreach (var m in mods) grid.Set(v, m.Path, m.EnergyKept!.Value);
        page.Charts([Svg.Heatmap("energy kept", grid.Rows, grid.Cols, v, x => $"{100 * x:0.###} %")]);
    }

    private static void Throughput(HtmlPage page, MergeReport r)
    {
        if (r.Throughput is not { Samples.Count: > 1 } t) return;
        page.H2("Throughput over time");
        page.P("Cumulative bytes read from the inputs, computed (handed to the writer) and written, sampled during the stream. A read line that leads while compute waits means the merge was bound by the disk; compute that leads with reads keeping pace means it was bound by the arithmetic.");
        static List<(double, double)> Of(IReadOnlyList<MergeReport.TimelineSample> s, Func<MergeReport.TimelineSample, long> f)
        {
            var points = new List<(double, double)>(s.Count);
            for (int i = 0; i < s.Count; i++) points.Add((s[i].Seconds, f(s[i]) / 1048576.0));
            return points;
        }
        var series = new List<Svg.Series>
        {
            new("read", Svg.Color(0), Of(t.Samples, x => x.Read), 1.8),
            new("computed", Svg.Color(1), Of(t.Samples, x => x.Computed), 1.8),
            new("written", Svg.Color(2), Of(t.Samples, x => x.Written), 1.8),
        };
        page.Charts([Svg.Lines("cumulative MiB", "seconds", "MiB", series, width: 560, height: 260)]);
    }

    /// <summary>A parameter's value, the same whether it is the merge's own or read back from the JSON.</summary>
    private static string Value(object? v) => v switch
    {
        double[] a => "[" + string.Join(", ", Array.ConvertAll(a, Svg.G)) + "]",
        double d => Svg.G(d),
        bool b => b ? "true" : "false",
        int or long or ulong => Convert.ToString(v, System.Globalization.CultureInfo.InvariantCulture)!,
        string s => s,
        System.Text.Json.JsonElement e => e.ValueKind switch
        {
            System.Text.Json.JsonValueKind.Array => "[" + string.Join(", ", e.EnumerateArray().Select(x => Value(x))) + "]",
            System.Text.Json.JsonValueKind.Number when e.TryGetUInt64(out var u) => u.ToString(System.Globalization.CultureInfo.InvariantCulture),
            System.Text.Json.JsonValueKind.Number when e.TryGetInt64(out var l) => l.ToString(System.Globalization.CultureInfo.InvariantCulture),
            System.Text.Json.JsonValueKind.Number => Svg.G(e.GetDouble()),
            System.Text.Json.JsonValueKind.String => e.GetString() is var str && double.TryParse(str, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var named) && !double.IsFinite(named) ? Svg.G(named) : e.GetString()!,
            System.Text.Json.JsonValueKind.True => "true",
            System.Text.Json.JsonValueKind.False => "false",
            _ => "null",
        },
        null => "null",
        _ => Convert.ToString(v, System.Globalization.CultureInfo.InvariantCulture) ?? "",
    };

    private static string Parameters(MergeReport r)
    {
        var parts = new List<string>(r.Parameters.Count);
        foreach (var p in r.Parameters) parts.Add($"{p.Key} {Value(p.Value)}");
        return string.Join(", ", parts);
    }

    private static string Bytes(long b) => Formats.MemorySize.Format(b);

    private static string Pct(long a, long b) => b == 0 ? "100 %" : $"{100.0 * a / b:0.##} %";
}
