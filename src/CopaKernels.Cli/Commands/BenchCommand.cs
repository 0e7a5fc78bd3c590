using System.CommandLine;
using CopaKernels.Gpu;
using CopaKernels.Cli.Benchmarking;
using CopaKernels.Formats;
using Spectre.Console;

namespace CopaKernels.Cli.Commands;

/// <summary><c>copa bench</c>: a quick side-by-side table of the kernel families on each chosen device.</summary>
internal static class BenchCommand
{
    public static Command Create(TextWriter stdout)
    {
        var device = new Option<string>("--device") { Description = "comma-separated devices to measure (cpu, cuda, opencl, cuda:N, opencl:N)", DefaultValueFactory = _ => "cpu" };
        var ops = new Option<string>("--ops") { Description = $"comma-separated operations: {string.Join(", ", KernelBench.AllOps)}", DefaultValueFactory = _ => string.Join(",", KernelBench.AllOps) };
        var quick = new Option<bool>("--quick") { Description = "fewer shapes and runs (about half a minute on 2 cores)" };
        var json = new Option<string?>("--json") { Description = "also write the results as JSON to this file" };
        var html = new Option<string?>("--html") { Description = "also draw the results as charts in this HTML file (copa report FILE.json draws a saved --json file)" };
        var threads = new Option<int>("--threads") { Description = "CPU threads (0 = all cores)", DefaultValueFactory = _ => 0 };
        var cmd = new Command("bench", "Time the merge kernels (selection, row sums, products, conversions) on each device, median of several runs") { device, ops, quick, json, html, threads };
        cmd.SetAction(parse =>
        {
            var chosen = parse.GetValue(ops)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            foreach (var op in chosen)
                if (!KernelBench.AllOps.Contains(op))
                    throw new CopaInputException(null, null, $"unknown --ops value '{op}' (expected {string.Join(", ", KernelBench.AllOps)})");
            if (parse.GetValue(threads) < 0) throw new CopaInputException(null, null, "--threads must be 0 or more");
            // Refused before the minutes of measuring, not after.
            foreach (var target in new[] { parse.GetValue(json), parse.GetValue(html) })
                if (target != null && !Directory.Exists(Path.GetDirectoryName(Path.GetFullPath(target))))
                    throw new CopaInputException(target, null, "its folder does not exist");
            var console = Terminal.For(stdout);
            var results = new List<BenchResult>();
            // The CPU backend runs first, so every other device's rows can show their speedup over it.
            var devices = parse.GetValue(device)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .OrderBy(d => d.Equals("cpu", StringComparison.OrdinalIgnoreCase) ? 0 : 1).ToArray();
            var cpuMs = new Dictionary<(string, string), double>();
            var backends = devices.Select(d => MergeDevices.Open(d, parse.GetValue(threads))).ToList();
            try
            {
                foreach (var backend in backends)
                {
                    console.MarkupLine($"[bold]{Markup.Escape(backend.Name)}[/]");
                    bool device = backend.Kind != Kernels.BackendKind.Cpu;
                    console.MarkupLine(Markup.Escape($"  {"op",-16} {"shape",-28} {"kernel",13} {"throughput",13}" +
                        (device ? $" {"transfer",13} {"vs cpu",8}" : "") + "   ratio measured in the same run"));
                    var bench = new KernelBench(backend, parse.GetValue(quick), r =>
                    {
                        results.Add(r);
                        if (!device) cpuMs[(r.Op, r.Shape)] = r.Ms;
                        console.MarkupLine(Markup.Escape($"  {r.Op,-16} {r.Shape,-28} {r.Ms,10:0.000} ms {r.Throughput,9:0.0} {r.Unit,-7}"
                            + (device ? $" {(r.TransferMs is { } t ? $"{t,10:0.000} ms" : ""),-13} {(r.VsCpu is { } v ? $"{v,7:0.00}×" : ""),-8}" : "")
                            + (r.Ratio is { } x ? $"   {x:0.00} {r.RatioOf}" : "")));
                    }, cpuMs);
                    bench.Run(chosen);
                }
            }
            finally
            {
                foreach (var b in backends) b.Dispose();
            }
            var file = new BenchHtml.BenchFile(DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'"),
                $"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}", results);
            if (parse.GetValue(json) is { } path) BenchHtml.WriteAtomically(path, BenchHtml.ToJson(file));
            if (parse.GetValue(html) is { } page) BenchHtml.WriteAtomically(page, BenchHtml.Render(file));
            return Program.ExitOk;
        });
        return cmd;
    }
}
