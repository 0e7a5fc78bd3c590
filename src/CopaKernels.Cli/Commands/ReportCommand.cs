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
                    html = MergeReportHtml.Render(MergeReport.FromJson(text));
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
}
