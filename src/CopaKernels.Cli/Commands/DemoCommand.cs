using System.CommandLine;
using System.Diagnostics;
using CopaKernels.Gpu;
using CopaKernels.Cli.Demo;
using CopaKernels.Formats;
using CopaKernels.Merge;
using CopaKernels.Merge.Streaming;

namespace CopaKernels.Cli.Commands;

/// <summary>
/// <c>copa demo</c>: writes a synthetic Llama-shaped base model (sharded BF16) and a few PEFT adapters,
/// then merges them with CoPA into an adapter and into a full model, on the chosen device. No downloads.
/// </summary>
internal static class DemoCommand
{
    /// <summary>Marks a folder as the demo's own, so a second run may replace it.</summary>
    private const string Marker = ".copa-demo";

    public static Command Create(TextWriter stdout, TextWriter stderr)
    {
        var dir = new Option<string>("--dir") { Description = "folder for the demo's models and outputs", DefaultValueFactory = _ => "copa-demo" };
        var device = new Option<string>("--device") { Description = "auto|cpu|cuda|opencl|cuda:N|opencl:N", DefaultValueFactory = _ => "auto" };
        var threads = new Option<int>("--threads") { Description = "CPU threads (0 = all cores)", DefaultValueFactory = _ => 0 };
        var preset = new Option<string>("--preset") { Description = "model shape: tiny (20M parameters) or llama-7b", DefaultValueFactory = _ => "tiny" };
        var layers = new Option<int?>("--layers") { Description = "override the preset's layer count" };
        var adapters = new Option<int?>("--adapters") { Description = "number of adapters (default 3; 8 for llama-7b)" };
        var rank = new Option<int?>("--rank") { Description = "LoRA rank of the adapters (default 8; 16 for llama-7b)" };
        var noBase = new Option<bool>("--no-base") { Description = "write adapters only (no base model, no model merge)" };
        var generateOnly = new Option<bool>("--generate-only") { Description = "write the inputs, do not merge (for benchmarks)" };
        var quiet = new Option<bool>("--quiet") { Description = "no progress" };
        var cmd = new Command("demo", "Generate a synthetic Llama-shaped base model and PEFT adapters, then merge them with CoPA (no downloads)")
        {
            dir, device, threads, preset, layers, adapters, rank, noBase, generateOnly, quiet,
        };
        cmd.SetAction(parse =>
        {
            var shape = parse.GetValue(preset) switch
            {
                "tiny" => LlamaShape.Tiny,
                "llama-7b" => LlamaShape.Llama7B,
                var p => throw new CopaInputException(null, null, $"unknown preset '{p}' (expected tiny, llama-7b)"),
            };
            if (parse.GetValue(layers) is { } l)
                shape = l > 0 ? shape with { Layers = l } : throw new CopaInputException(null, null, "--layers must be positive");
            bool big = shape.Name != "tiny";
            int n = parse.GetValue(adapters) ?? (big ? 8 : 3);
            int r = parse.GetValue(rank) ?? (big ? 16 : 8);
            if (n < 1 || n > 64) throw new CopaInputException(null, null, "--adapters must be in 1..64");
            if (r < 1 || r > 1024) throw new CopaInputException(null, null, "--rank must be in 1..1024");
            return Run(parse.GetValue(dir)!, shape, n, r, !parse.GetValue(noBase), parse.GetValue(generateOnly),
                parse.GetValue(device)!, parse.GetValue(threads), parse.GetValue(quiet), stdout, stderr);
        });
        return cmd;
    }

    private static int Run(string dir, LlamaShape shape, int count, int rank, bool withBase, bool generateOnly,
        string device, int threads, bool quiet, TextWriter stdout, TextWriter stderr)
    {
        if (string.IsNullOrEmpty(dir)) throw new CopaInputException(null, null, "--dir is empty; give the demo folder");
        // Through any symbolic link: a link to an earlier demo's folder has that folder replaced, not the link.
        dir = RealPath.OfInput(dir);
        // Ctrl-C, SIGTERM, SIGHUP: as in copa merge, for the generation and both merges (each merge removes its temporary folder).
        using var interruption = new Interruption();
        return interruption.Run(ct =>
        {
            var (basePath, adapterDirs) = Generate(dir, shape, count, rank, withBase, quiet, stdout, stderr, ct);
            if (generateOnly) return Program.ExitOk;

            var options = new MergeOptions { Method = "copa" };
            // One backend for both merges: a device backend compiles its kernels when it is opened.
            using var backend = MergeDevices.Open(device, threads);
            stdout.WriteLine();
            MergeCommand.Run(new MergeRequest { Options = options, Adapters = adapterDirs, Output = Path.Combine(dir, "merged-adapter") },
                backend, interruption, quiet, stdout, stderr);
            if (withBase)
            {
                stdout.WriteLine();
                MergeCommand.Run(new MergeRequest
                {
                    Options = options, Adapters = adapterDirs, Output = Path.Combine(dir, "merged-model"),
                    Mode = OutputMode.Model, Base = basePath,
                }, backend, interruption, quiet, stdout, stderr);
            }
            stdout.WriteLine();
            stdout.WriteLine($"done. Look inside with: copa inspect {Path.Combine(dir, "merged-adapter")}");
            return Program.ExitOk;
        });
    }

    /// <summary>
    /// Writes the base model and the adapters into a fresh demo folder. If that does not finish (a
    /// failure, a signal), the folder is removed again with the parent folders made for it: a half
    /// written model is of no use, and everything in the folder was written by this run.
    /// </summary>
    private static (string Base, List<string> Adapters) Generate(string dir, LlamaShape shape, int count, int rank, bool withBase,
        bool quiet, TextWriter stdout, TextWriter stderr, CancellationToken ct)
    {
        var createdParents = ParentFolders.Missing(Path.GetDirectoryName(dir));
        Prepare(dir);
        try
        {
            var clock = Stopwatch.StartNew();
            var basePath = Path.Combine(dir, "base");
            if (withBase)
            {
                long total = shape.Tensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)) * 2;
                ConsoleProgress.Run(stderr, quiet, "writing base", p =>
                {
                    p?.Start(total, shape.Tensors.Count());
                    SyntheticModel.WriteBase(basePath, shape, 1, (b, tensor) =>
                    {
                        ct.ThrowIfCancellationRequested();
                        p?.Advance(b, tensor);
                    });
                    return 0;
                });
                stdout.WriteLine($"base model:  {basePath} ({shape.Name}, {shape.Layers} layers, BF16, {Terminal.Bytes(DirSize(basePath))})");
            }
            var adapterDirs = new List<string>();
            for (int i = 0; i < count; i++)
            {
                ct.ThrowIfCancellationRequested();
                var a = Path.Combine(dir, "adapters", $"task-{i + 1}");
                SyntheticModel.WriteAdapter(a, shape, rank, 2.0 * rank, (ulong)(100 + i), withBase ? basePath : null);
                adapterDirs.Add(a);
            }
            ct.ThrowIfCancellationRequested();
            stdout.WriteLine($"adapters:    {count} × rank {rank} on q,k,v,o,gate,up,down in {Path.Combine(dir, "adapters")} ({Terminal.Bytes(adapterDirs.Sum(DirSize))})");
            stdout.WriteLine($"generated in {clock.Elapsed.TotalSeconds:0.0} s");
            return (basePath, adapterDirs);
        }
        catch
        {
            try { Directory.Delete(dir, recursive: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Left as it is; the next demo run here replaces it.
            }
            ParentFolders.RemoveEmpty(createdParents);
            throw;
        }
    }

    /// <summary>Creates the demo folder; replaces an earlier demo's folder, never anything else.</summary>
    private static void Prepare(string dir)
    {
        if (File.Exists(dir)) throw new CopaInputException(dir, null, "demo folder is a file");
        if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
        {
            if (!File.Exists(Path.Combine(dir, Marker)))
                throw new CopaInputException(dir, null, "folder exists, is not empty and is not an earlier demo; choose another --dir");
            Directory.Delete(dir, recursive: true);
        }
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, Marker), "written by 'copa demo'; the next 'copa demo' run here replaces this folder\n");
    }

    private static long DirSize(string dir) =>
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
}
