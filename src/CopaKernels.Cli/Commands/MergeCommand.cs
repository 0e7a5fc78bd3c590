using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using CopaKernels.Gpu;
using CopaKernels.Formats;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;
using CopaKernels.Merge;
using CopaKernels.Merge.Streaming;

namespace CopaKernels.Cli.Commands;

/// <summary><c>copa merge</c>: plan (headers only), then stream the merge with a memory bound (SEMANTICS §7).</summary>
internal static class MergeCommand
{
    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var config = new Option<string?>("--config") { Description = "YAML file with the same settings (flags override it)" };
        var method = new Option<string?>("--method") { Description = string.Join("|", MergeMethods.Names) };
        var adapter = new Option<string[]>("--adapter") { Description = "PEFT adapter folder (repeatable, in order)", AllowMultipleArgumentsPerToken = true };
        var weight = Numbers.Many("--weight", "weight w_n of each adapter (repeatable, in order; default 1)");
        var output = new Option<string?>("--out") { Description = "output folder (must not exist or be empty)" };
        var mode = new Option<string?>("--output") { Description = "adapter|model|delta (default adapter)" };
        var baseModel = new Option<string?>("--base") { Description = "base model folder, index.json or .safetensors (needed for --output model)" };
        var rank = new Option<string?>("--rank") { Description = "sum (the exact merged rank) or N (exact re-rank to N)" };
        var space = new Option<string?>("--space") { Description = "factors|delta: where the baselines operate (default factors)" };
        var density = Numbers.Option("--density", "ρ, the fraction kept by trims and DARE (default 0.2)");
        var lambda = Numbers.Option("--lambda", "λ (default 2 for copa, copa-official; 1 otherwise)");
        var clamp = Numbers.Option("--clamp", "CoPA clamp c in [0, 1) (default 0; copa-official fixes 0.2)");
        var normalize = new Option<bool?>("--normalize") { Description = "CoPA cross-task normalisation (default true)" };
        var pcbRatio = Numbers.Option("--pcb-ratio", "PCB ratio q (default 0.1)");
        var seed = Numbers.Integer<ulong>("--seed", "DARE seed (default 0)");
        var device = new Option<string?>("--device") { Description = "auto|cpu|cuda|opencl|cuda:N|opencl:N (default auto)" };
        var threads = Numbers.Integer<int>("--threads", "CPU threads (default all cores)");
        var maxMemory = new Option<string?>("--max-memory") { Description = "working-memory budget, e.g. 512MiB, 2GiB (default 2GiB)" };
        var outDtype = new Option<string?>("--out-dtype") { Description = "bf16|f16|f32 (default: base dtype / adapters' dtype / f32 for delta)" };
        var shardSize = new Option<string?>("--shard-size") { Description = "max shard size, e.g. 5GB (default: mirror the base; 5GB for delta)" };
        var quiet = new Option<bool>("--quiet") { Description = "no plan, progress or summary; errors only" };
        var noSync = new Option<bool>("--no-sync") { Description = "do not wait for the output to reach the disk (still complete and atomic against failures)" };
        var noHtml = new Option<bool>("--no-html-report") { Description = "write merge_report.json only, not merge_report.html" };
        var spectra = new Option<string?>("--report-spectra") { Description = "few|all|none: modules whose singular-value spectra the report gives (default few: of each module type, its first, middle and last layer)" };
        // mergekit's habit: `copa merge CONFIG.yml OUT`, the same as --config CONFIG.yml --out OUT.
        var configArg = new Argument<string?>("CONFIG") { Description = "YAML config (as --config), optional", Arity = ArgumentArity.ZeroOrOne };
        var outArg = new Argument<string?>("OUT") { Description = "output folder (as --out), optional", Arity = ArgumentArity.ZeroOrOne };
        var cmd = new Command("merge", "Merge LoRA adapters into an adapter, a full model or dense deltas, streaming with bounded memory")
        {
            configArg, outArg,
            config, method, adapter, weight, output, mode, baseModel, rank, space, density, lambda, clamp, normalize, pcbRatio,
            seed, device, threads, maxMemory, outDtype, shardSize, quiet, noSync, noHtml, spectra,
        };
        cmd.SetAction(parse =>
        {
            var positionalConfig = parse.GetValue(configArg);
            var positionalOut = parse.GetValue(outArg);
            if (positionalConfig != null && parse.GetResult(config) != null)
                throw Usage($"the config is given twice ({positionalConfig} and --config {parse.GetValue(config)}); give one");
            if (positionalOut != null && parse.GetResult(output) != null)
                throw Usage($"the output is given twice ({positionalOut} and --out {parse.GetValue(output)}); give one");
            var configPath = parse.GetValue(config) ?? positionalConfig;
            var file = configPath is { } c ? MergeConfig.Load(c) : null;
            // A value taken from the config file (its flag not given): its errors name the file and line.
            bool FromFile(Option o, string key) => file != null && parse.GetResult(o) == null && file.LineOf(key) != null;
            T Checked<T>(Option o, string key, Func<T> read)
            {
                try { return read(); }
                catch (CopaInputException e) when (e.FilePath == null && FromFile(o, key)) { throw file!.InFile(key, e.Reason); }
            }
            string? Text(Option<string?> o, string key) => parse.GetResult(o) != null ? parse.GetValue(o) : file?.Text(key);
            T? Value<T>(Option<T?> o, Func<MergeConfig, T?> fromFile) where T : struct =>
                parse.GetResult(o) != null ? parse.GetValue(o) : file != null ? fromFile(file) : null;

            var adapters = parse.GetResult(adapter) != null ? parse.GetValue(adapter)!.ToList() : file?.Adapters ?? [];
            var weights = parse.GetResult(weight) != null ? parse.GetValue(weight)!.ToList() : file?.Weights;
            var methodName = Text(method, "method") ?? throw Usage("--method is required (" + string.Join(", ", MergeMethods.Names) + ")");
            var outPath = (parse.GetResult(output) != null ? parse.GetValue(output) : positionalOut ?? file?.PathValue("out"))
                ?? throw Usage("--out is required (the output folder)");
            bool isQuiet = parse.GetValue(quiet) || (file?.Bool("quiet") ?? false);

            var request = new MergeRequest
            {
                Options = new MergeOptions
                {
                    Method = methodName,
                    Density = Value(density, f => f.Double("density")),
                    Lambda = Value(lambda, f => f.Double("lambda")),
                    Clamp = Value(clamp, f => f.Double("clamp")),
                    Normalize = Value(normalize, f => f.Bool("normalize")),
                    PcbRatio = Value(pcbRatio, f => f.Double("pcb-ratio")),
                    Seed = Value(seed, f => f.Seed),
                    Space = Checked(space, "space", () => MergeSettings.ParseSpace(Text(space, "space"))),
                    Weights = weights,
                },
                Adapters = adapters,
                Output = outPath,
                Mode = Checked(mode, "output", () => MergeSettings.ParseMode(Text(mode, "output"))),
                Base = parse.GetResult(baseModel) != null ? parse.GetValue(baseModel) : file?.PathValue("base"),
                Rank = Checked(rank, "rank", () => MergeSettings.ParseRank(Text(rank, "rank"))),
                OutDType = Checked(outDtype, "out-dtype", () => Text(outDtype, "out-dtype") is { } d ? MergeSettings.ParseOutDType(d) : (DType?)null),
                ShardSize = Checked(shardSize, "shard-size", () => Text(shardSize, "shard-size") is { } ss ? MemorySize.Parse(ss, "shard-size") : (long?)null),
                MaxMemory = Checked(maxMemory, "max-memory", () => Text(maxMemory, "max-memory") is { } mm ? MemorySize.Parse(mm, "max-memory") : MergeRequest.DefaultMaxMemory),
                Sync = !(parse.GetValue(noSync) || (file?.Bool("no-sync") ?? false)),
                HtmlReport = !(parse.GetValue(noHtml) || (file?.Bool("no-html-report") ?? false)),
                ReportSpectra = Checked(spectra, "report-spectra", () => MergeSettings.ParseSpectra(Text(spectra, "report-spectra"))),
            };
            int threadCount = Value(threads, f => f.Threads) ?? 0;
            if (threadCount < 0) throw Usage("--threads must be 0 or more");
            var deviceSpec = Text(device, "device") ?? "auto";
            Option? OptionOf(string parameter) => parameter switch
            {
                "method" => method, "density" => density, "lambda" => lambda, "clamp" => clamp, "normalize" => normalize,
                "pcb-ratio" => pcbRatio, "seed" => seed, "space" => space, "weight" => weight, _ => null,
            };
            try
            {
                return Run(request, deviceSpec, threadCount, isQuiet, stdout, stderr);
            }
            catch (ParameterException e) when (OptionOf(e.Parameter) is { } o && FromFile(o, e.Parameter))
            {
                throw file!.InFile(e.Parameter, e.Reason.Replace("`", "", StringComparison.Ordinal));
            }
        });
        return cmd;
    }

    /// <summary>
    /// Plans a merge (so input errors come before any device is opened), opens the device, and runs it,
    /// printing the plan and a summary unless quiet.
    /// </summary>
    public static int Run(MergeRequest request, string deviceSpec, int threads, bool quiet, TextWriter stdout, TextWriter stderr)
    {
        using var job = MergeJob.Plan(request);
        // Ctrl-C, SIGTERM, SIGHUP: stop at the next tensor, remove the temporary folder, exit 128 + signal.
        // Registered before the device is opened: see Interruption on the handlers native libraries install.
        using var interruption = new Interruption();
        using var backend = MergeDevices.Open(deviceSpec, threads);
        return Run(job, backend, quiet, stdout, stderr, interruption);
    }

    /// <summary>
    /// Plans and runs a merge on an open backend (several merges can share one device and its loaded kernels),
    /// stopped by the caller's <paramref name="interruption"/>.
    /// </summary>
    public static int Run(MergeRequest request, IMergeBackend backend, Interruption interruption, bool quiet, TextWriter stdout, TextWriter stderr)
    {
        using var job = MergeJob.Plan(request);
        return Run(job, backend, quiet, stdout, stderr, interruption);
    }

    private static int Run(MergeJob job, IMergeBackend backend, bool quiet, TextWriter stdout, TextWriter stderr, Interruption interruption)
    {
        if (!quiet) PrintPlan(job.Planned, backend.Name, stdout);
        var report = interruption.Run(ct => ConsoleProgress.Run(stderr, quiet, "merging", progress => job.Run(backend, progress, ct)));
        if (!quiet) PrintSummary(report, stdout);
        return Program.ExitOk;
    }

    private static void PrintPlan(MergePlan plan, string device, TextWriter o)
    {
        var r = plan.Request;
        o.WriteLine($"plan: {plan.Method.Name} over {Terminal.Count(plan.Adapters.Count, "adapter")}, {Terminal.Count(plan.Modules.Count, "module")}");
        o.WriteLine($"  output:  {r.Mode.ToString().ToLowerInvariant()} → {Path.GetFullPath(r.Output)} ({Terminal.Bytes(plan.OutputBytes)}{(plan.OutDType is { } d ? ", " + d : "")})");
        int partial = plan.Modules.Count(m => m.Adapters.Count < plan.Adapters.Count);
        if (partial > 0)
            o.WriteLine($"  targets: {plan.Modules.Count - partial} modules in every adapter, {partial} in only some (each merged over the adapters that have it; " +
                        $"by adapter: {string.Join(", ", plan.Adapters.Select((a, n) => $"{n + 1}: {a.Modules.Count}"))}; the report lists each module's)");
        if (plan.FullTensors.Count > 0)
        {
            int mean = plan.FullTensors.Count(f => f.IsMean), partialFull = plan.FullTensors.Count(f => f.Adapters.Count < plan.Adapters.Count);
            o.WriteLine($"  full:    {plan.FullTensors.Count} full tensors beside the factors: {mean} merged as the {(r.Options.Declared.Reads(MergeParameter.Weights) && r.Options.Weights is { Count: > 0 } ? "weighted " : "")}mean" +
                        (mean < plan.FullTensors.Count ? $", {plan.FullTensors.Count - mean} base-layer {(plan.FullTensors.Count - mean == 1 ? "copy" : "copies")} carried through" : "") +
                        (partialFull > 0 ? $"; {partialFull} in only some adapters (over those)" : ""));
        }
        if (plan.Base != null) o.WriteLine($"  base:    {plan.Base.Path} ({Terminal.Count(plan.Base.Shards.Count, "shard")}, {Terminal.Count(plan.Base.Names.Count, "tensor")})");
        var ranks = plan.Modules.Select(m => m.OutRank).Distinct().Order().ToList();
        if (ranks.Count > 0 && ranks[0] > 0) o.WriteLine($"  rank:    {string.Join(", ", ranks)}{(r.Rank == null ? " (exact)" : " (re-ranked)")}");
        o.WriteLine($"  memory:  about {Terminal.Bytes(plan.EstimatedPeakBytes)} of working memory, budget {Terminal.Bytes(r.MaxMemory)}{(plan.Prefetch ? ", reading ahead" : "")}");
        o.WriteLine($"  device:  {device}");
    }

    private static void PrintSummary(MergeReport report, TextWriter o)
    {
        double total = report.TimingsSeconds["stream_total"];
        o.WriteLine($"merged {Terminal.Count(report.Summary.Modules, "module")} into {report.Output.Path} ({Terminal.Bytes(report.Output.DataBytes)}) in {total:0.00} s, " +
                    $"{report.Output.DataBytes / Math.Max(total, 1e-9) / 1e6:0.0} MB/s, peak RSS {Terminal.Bytes(report.Memory.PeakRss)}");
        if (report.Summary.Considered > 0)
            o.WriteLine($"  kept {100.0 * report.Summary.Kept / report.Summary.Considered:0.00}% of {report.Summary.Considered:N0} factor entries" +
                        (report.Summary.ZeroDenominatorRows > 0 ? $"; {report.Summary.ZeroDenominatorRows} rows had S set to 1 (empty after the trim)" : ""));
        o.WriteLine($"  report: {Path.Combine(report.Output.Path, MergeReport.FileName)}");
        if (File.Exists(Path.Combine(report.Output.Path, CopaKernels.Merge.Reporting.MergeReportHtml.FileName)))
            o.WriteLine($"          {Path.Combine(report.Output.Path, CopaKernels.Merge.Reporting.MergeReportHtml.FileName)}");
    }

    private static CopaInputException Usage(string message) => new(null, null, message);
}
