using System.Text.Json;
using CopaKernels.Formats;
using CopaKernels.Merge.Reporting;

namespace CopaKernels.Cli.Benchmarking;

/// <summary>
/// <c>copa bench --html</c>: the bench's results as charts, one section per operation. Per shape: each device's
/// kernel time with its host↔device transfer time drawn as a bar of its own (never added in), each device's
/// speedup over the CPU backend, and the ratio the bench measured in the same run (to a memory-bound floor
/// such as one SumOfMagnitudes pass) where it measures one. Drawn from the bench JSON alone, so a GPU
/// machine's <c>--json</c> file can be drawn anywhere (<c>copa report FILE.json</c>).
/// </summary>
internal static class BenchHtml
{
    /// <summary>The bench JSON: when and where it ran, and the results.</summary>
    public sealed record BenchFile(string Date, string Machine, IReadOnlyList<BenchResult> Results);

    public static string ToJson(BenchFile file) =>
        JsonSerializer.Serialize(new { date = file.Date, machine = file.Machine, results = file.Results }, new JsonSerializerOptions { WriteIndented = true });

    /// <summary>Reads a <c>copa bench --json</c> file; null when the JSON is not one.</summary>
    public static BenchFile? TryRead(JsonDocument doc)
    {
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("results", out var results) || results.ValueKind != JsonValueKind.Array)
            return null;
        var list = results.Deserialize<List<BenchResult>>() ?? [];
        if (list.Any(r => r.Device == null || r.Op == null || r.Shape == null)) return null;
        return new BenchFile(Text(root, "date"), Text(root, "machine"), list);
    }

    private static string Text(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : "";

    public static string Render(BenchFile file)
    {
        var page = new HtmlPage("copa bench");
        var devices = file.Results.Select(r => r.Device).Distinct().ToList();
        var rows = new List<(string, string)> { ("date", file.Date), ("machine", file.Machine) };
        for (int i = 0; i < devices.Count; i++) rows.Add(($"device {i}", devices[i]));
        page.Table(rows);
        page.P("Kernel time is the median of the runs with the data resident on the device; a device's transfer time (inputs to it, the result back) is timed on its own and drawn as its own bar, never added in. Speedup is the CPU backend's median time over the device's, for the same operation and shape, in the same run.");
        foreach (var op in file.Results.Select(r => r.Op).Distinct())
        {
            var ofOp = file.Results.Where(r => r.Op == op).ToList();
            page.H2(op);
            var time = new List<Svg.Bar>();
            var speed = new List<Svg.Bar>();
            var ratio = new List<Svg.Bar>();
            foreach (var shape in ofOp.Select(r => r.Shape).Distinct())
                foreach (var r in ofOp.Where(r => r.Shape == shape))
                {
                    int d = devices.IndexOf(r.Device);
                    string label = $"{Svg.Short(shape, 20)} · {d}";
                    time.Add(new Svg.Bar(label, r.Ms, $"{r.Ms:0.###} ms, {r.Throughput:0.#} {r.Unit}", Svg.Color(d)));
                    if (r.TransferMs is { } t) time.Add(new Svg.Bar($"{label} transfer", t, $"{t:0.###} ms", "#bbbbbb"));
                    if (r.VsCpu is { } v) speed.Add(new Svg.Bar(label, v, $"{v:0.00}×", Svg.Color(d)));
                    if (r.Ratio is { } x) ratio.Add(new Svg.Bar(label, x, $"{x:0.00} {r.RatioOf}", Svg.Color(d)));
                }
            var charts = new List<string> { Svg.Bars("median time (ms), per shape · device", time, 640, log: true) };
            if (speed.Count > 0) charts.Add(Svg.Bars("speedup over the CPU backend", speed, 460));
            if (ratio.Count > 0) charts.Add(Svg.Bars($"ratio measured in the same run ({ofOp.First(r => r.RatioOf != null).RatioOf})", ratio, 460));
            page.Charts(charts);
        }
        return page.ToString();
    }

    /// <summary>Writes <paramref name="text"/> to <paramref name="path"/> through a temporary file renamed over it, so a reader never sees half a file.</summary>
    public static void WriteAtomically(string path, string text)
    {
        var full = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) throw new CopaInputException(path, null, "its folder does not exist");
        var temp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        try
        {
            File.WriteAllText(temp, text);
            File.Move(temp, full, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            File.Delete(temp);
            throw new CopaInputException(path, null, $"cannot write: {e.Message}");
        }
    }
}
