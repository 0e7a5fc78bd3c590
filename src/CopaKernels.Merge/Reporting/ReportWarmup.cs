using CopaKernels.Merge.Streaming;

namespace CopaKernels.Merge.Reporting;

/// <summary>
/// Compiles the report's code (the spectra's numerics, the JSON writer, the HTML renderer) on a spare core while
/// a merge is planned. The plan reads headers on one thread and leaves the other cores idle; the report is drawn
/// once per process, at the end, where compiling its code first would add tens of milliseconds to a merge that
/// takes half a second. The warm-up decomposes a small pair (when spectra are asked for) and draws a two-module
/// report (when the page is), and discards both. (Run at idle priority as the stream starts instead, it slowed
/// the stream more than it saved: bench/RESULTS.md, issue #17.)
/// </summary>
internal static class ReportWarmup
{
    private static int s_done;

    /// <summary>Starts the warm-up once per process, in the background; returns at once (and does nothing for a null request, which the plan refuses).</summary>
    public static void Start(MergeRequest? request)
    {
        if (request is null || (!request.HtmlReport && request.ReportSpectra == SpectraSelection.None)) return;
        if (Interlocked.Exchange(ref s_done, 1) != 0) return;
        _ = Task.Run(() =>
        {
            try
            {
                double[] sigma = [3, 2, 1, 0.5, 0.25];
                if (request.ReportSpectra != SpectraSelection.None) sigma = Decompose();
                Render(sigma, request.HtmlReport);
            }
            catch (Exception) { }   // a warm-up that fails costs the report its head start, nothing else
        });
    }

    private static double[] Decompose()
    {
        // Rank 5: the Gram's 4 × 4 tiles and its remainder both run (code the published tool compiles at its first call).
        var b = new float[64 * 5];
        var a = new float[5 * 48];
        for (int i = 0; i < b.Length; i++) b[i] = (i % 7) - 3 + i % 3 * 0.25f;
        for (int i = 0; i < a.Length; i++) a[i] = (i % 5) - 2 + i % 4 * 0.125f;
        return LowRankTruncation.SingularValues(b, a, 64, 5, 48, new ParallelOptions { MaxDegreeOfParallelism = 1 });
    }

    private static void Render(double[] sigma, bool html)
    {
        string[] paths = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"];
        var report = new MergeReport
        {
            Tool = "warmup", FinishedUtc = DateTime.UnixEpoch, Method = "copa",
            Parameters = new SortedDictionary<string, object?>(StringComparer.Ordinal) { ["density"] = 0.2, ["rank"] = "sum", ["normalize"] = true, ["weights"] = new[] { 1.0 } },
            Adapters = [new MergeReport.InputFile("/a/0/adapter_model.safetensors", 1), new MergeReport.InputFile("/a/1/adapter_model.safetensors", 1)],
            Base = [new MergeReport.InputFile("/b/model.safetensors", 1)],
            Output = new MergeReport.OutputInfo("/out", "adapter", "BF16", 1, 4, 8), Device = "cpu",
            TimingsSeconds = new SortedDictionary<string, double>(StringComparer.Ordinal) { ["plan"] = 0.1, ["read"] = 0.1, ["merge_compute"] = 0.1, ["write"] = 0.1, ["stream_total"] = 0.1, ["spectra"] = 0.1 },
            Memory = new MergeReport.MemoryInfo(2, 1, 1, 0, true), Summary = new MergeReport.Totals(2, 1, 2, 1, 0.1),
            Modules = paths.Select(p => new MergeReport.ModuleReport(p, 64, 48, [4, 4], 8, false, [0.1f, 0.2f], [0.1f, 0.2f], 1, 2, 1, 0.1, 0.01,
                null, [0.2, 0.2], [0.2, 0.2], [new ScaleSummary(1, 2, 3, 1), new ScaleSummary(1, 2, 3, 0)], 0.99)).ToList(),
            Spectra = paths.Select(p => new MergeReport.ModuleSpectrum(p, [0, 1], [sigma, sigma], sigma)).ToList(),
            Throughput = new MergeReport.Timeline(0.02, [new(0, 0, 0, 0), new(0.02, 10, 5, 2)]),
        };
        _ = report.ToJson();
        if (html) _ = MergeReportHtml.Render(report);
    }
}
