using System.CommandLine;
using System.Text.Json;
using CopaKernels.Cli.Benchmarking;
using CopaKernels.Formats;
using CopaKernels.Merge.Reporting;
using CopaKernels.Merge.Streaming;

namespace CopaKernels.Cli.Commands;

/// <summary>
/// <c>copa report FILE.json [-o OUT.html]</c>: draws a saved <c>merge_report.json</c> (the page a merge writes
/// beside it, <c>merge_report.html</c>) or a <c>copa bench --json</c> file, from the JSON alone.
/// </summary>
internal static class ReportCommand
{
    public static Command Create(TextWriter stdout)
    {
        var input = new Argument<string>("FILE") { Description = "merge_report.json, or a copa bench --json file" };
        var output = new Option<string?>("-o", "--out") { Description = "the HTML file to write (default: FILE with .html in place of .json)", HelpName = "OUT.html" };
        var cmd = new Command("report", "Draw a merge_report.json or a copa bench --json file as a self-contained HTML page") { input, output };
        cmd.SetAction(parse =>
        {
            var path = parse.GetValue(input)!;
            if (!File.Exists(path)) throw new CopaInputException(path, null, "no such file");
            string text;
            try { text = File.ReadAllText(path); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new CopaInputException(path, null, $"cannot read: {e.Message}"); }
            string html;
            try
            {
                using var doc = JsonDocument.Parse(text);
                if (BenchHtml.TryRead(doc) is { } bench) html = BenchHtml.Render(bench);
                else if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("modules", out _) && doc.RootElement.TryGetProperty("method", out _))
                {
                    var report = MergeReport.FromJson(text);
                    if (ShapeError(report) is { } why) throw new CopaInputException(path, null, $"not a merge report copa can draw: {why}");
                    html = MergeReportHtml.Render(report);
                }
                else throw new CopaInputException(path, null, "neither a merge_report.json nor a copa bench --json file");
            }
            catch (JsonException e) { throw new CopaInputException(path, null, $"not a report: {e.Message}"); }
            catch (Exception e) when (e is NotSupportedException or InvalidOperationException or ArgumentException)
            {
                throw new CopaInputException(path, null, $"not a report: {e.Message}");
            }
            var outPath = parse.GetValue(output) ?? Path.ChangeExtension(path, ".html");
            BenchHtml.WriteAtomically(outPath, html);
            stdout.WriteLine($"wrote {outPath} ({Terminal.Bytes(new FileInfo(outPath).Length)})");
            return Program.ExitOk;
        });
        return cmd;
    }

    /// <summary>
    /// What a hand-edited or foreign merge_report.json lacks that the page needs (a member missing or null,
    /// a list whose length does not match its adapters), or null when it can be drawn: the deserializer
    /// checks only the required top-level members.
    /// </summary>
    private static string? ShapeError(MergeReport r)
    {
        if (r.Parameters is null || r.Adapters is null || r.Output is null || r.TimingsSeconds is null || r.Memory is null || r.Summary is null || r.Modules is null)
            return "a top-level member is null";
        if (r.Adapters.Any(a => a?.Path is null)) return "an adapter entry has no path";
        foreach (var m in r.Modules)
        {
            if (m?.Path is null) return "a module has no path";
            if (m.Ranks is null || m.ThresholdsA is null || m.ThresholdsB is null) return $"module {m.Path}: ranks or thresholds missing";
            if (m.Scales is { } sc && sc.Any(x => x is null)) return $"module {m.Path}: a null scale";
        }
        foreach (var sp in r.Spectra ?? [])
        {
            if (sp?.Path is null || sp.Adapters is null || sp.Tasks is null || sp.Tasks.Any(t => t is null)) return "a spectrum is missing its path, adapters or tasks";
            if (sp.Tasks.Count > sp.Adapters.Count) return $"spectrum {sp.Path}: more task spectra than adapters";
        }
        if (r.Throughput is { } t && (t.Samples is null || t.Samples.Any(x => x is null))) return "the throughput has null samples";
        return null;
    }
}
