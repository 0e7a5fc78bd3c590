using System.CommandLine;
using System.Text.Json;
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
        var threads = new Option<int>("--threads") { Description = "CPU threads (0 = all cores)", DefaultValueFactory = _ => 0 };
        var cmd = new Command("bench", "Time the merge kernels (selection, row sums, products, conversions) on each device, median of several runs") { device, ops, quick, json, threads };
        cmd.SetAction(parse =>
        {
            var chosen = parse.GetValue(ops)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            foreach (var op in chosen)
                if (!KernelBench.AllOps.Contains(op))
                    throw new CopaInputException(null, null, $"unknown --ops value '{op}' (expected {string.Join(", ", KernelBench.AllOps)})");
            if (parse.GetValue(threads) < 0) throw new CopaInputException(null, null, "--threads must be 0 or more");
            var console = Terminal.For(stdout);
            var results = new List<BenchResult>();
            var devices = parse.GetValue(device)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var backends = devices.Select(d => Backends.Create(d, parse.GetValue(threads))).ToList();
            try
            {
                foreach (var backend in backends)
                {
                    console.MarkupLine($"[bold]{Markup.Escape(backend.Name)}[/]");
                    console.MarkupLine(Markup.Escape($"  {"op",-15} {"shape",-28} {"median",13} {"throughput",13}   ratio measured in the same run"));
                    var bench = new KernelBench(backend, parse.GetValue(quick), r =>
                    {
                        results.Add(r);
                        console.MarkupLine(Markup.Escape($"  {r.Op,-15} {r.Shape,-28} {r.Ms,10:0.000} ms {r.Throughput,9:0.0} {r.Unit}"
                            + (r.Ratio is { } x ? $"   {x:0.00} {r.RatioOf}" : "")));
                    });
                    bench.Run(chosen);
                }
            }
            finally
            {
                foreach (var b in backends) b.Dispose();
            }
            if (parse.GetValue(json) is { } path)
                File.WriteAllText(path, JsonSerializer.Serialize(new
                {
                    date = DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'"),
                    machine = $"{Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}",
                    results,
                }, new JsonSerializerOptions { WriteIndented = true }));
            return Program.ExitOk;
        });
        return cmd;
    }
}
