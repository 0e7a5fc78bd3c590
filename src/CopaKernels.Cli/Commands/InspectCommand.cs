using System.CommandLine;
using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Formats.Torch;
using Spectre.Console;

namespace CopaKernels.Cli.Commands;

/// <summary><c>copa inspect PATH</c>: tensors, metadata and totals of a safetensors file, a PyTorch zip checkpoint, a sharded model or a PEFT adapter.</summary>
internal static class InspectCommand
{
    public static Command Create(TextWriter stdout)
    {
        var path = new Argument<string>("PATH") { Description = "a .safetensors file, a PyTorch .bin/.pt/.pth checkpoint, a sharded model folder or index.json, or a PEFT adapter folder" };
        var cmd = new Command("inspect", "Show the tensors, metadata and totals of a safetensors file, PyTorch checkpoint, sharded model or LoRA adapter (reads headers only)") { path };
        cmd.SetAction(parse =>
        {
            Run(parse.GetValue(path)!, Terminal.For(stdout), stdout);
            return Program.ExitOk;
        });
        return cmd;
    }

    public static void Run(string path, IAnsiConsole console, TextWriter stdout)
    {
        if (!File.Exists(path) && !Directory.Exists(path))
            throw new CopaInputException(path, null, "no such file or folder");
        if (LoraAdapter.IsAdapterFolder(path))
        {
            using var adapter = LoraAdapter.Open(path);
            ShowAdapter(adapter, console, stdout);
            return;
        }
        if (File.Exists(path) && TorchCheckpoint.LooksLikeCheckpoint(path))
        {
            using var checkpoint = TorchCheckpoint.Open(path);
            console.MarkupLine($"[bold]PyTorch checkpoint (zip)[/] {Markup.Escape(checkpoint.Path)}");
            ShowTensors([checkpoint], sharded: false, console, stdout);
            return;
        }
        using var model = ShardedModel.Open(path);
        ShowModel(model, console, stdout);
    }

    private static void ShowAdapter(LoraAdapter a, IAnsiConsole console, TextWriter stdout)
    {
        var c = a.Config;
        console.MarkupLine($"[bold]LoRA adapter[/] {Markup.Escape(a.Folder)}");
        var info = new Grid().AddColumn().AddColumn();
        info.AddRow("weights", Markup.Escape(Path.GetFileName(a.Weights.Path)) + (a.Weights is CopaKernels.Formats.Torch.TorchCheckpoint ? " (PyTorch checkpoint, zip)" : ""));
        info.AddRow("base model", Markup.Escape(c.BaseModelNameOrPath ?? "(not given)"));
        info.AddRow("rank r", c.R.ToString() + (c.RIsDefault ? " (not in the config: PEFT's default)" : ""));
        info.AddRow("lora_alpha", c.LoraAlpha.ToString("G") + (c.LoraAlphaIsDefault ? " (not in the config: PEFT's default)" : ""));
        info.AddRow("scale", $"{c.ScaleFor("", c.R):G6} ({(c.UseRsLora ? "α/√r, rsLoRA" : "α/r")})");
        info.AddRow("target modules", Markup.Escape(c.Targeting.TargetsUnknown ? "(not in the config: PEFT's per-architecture default)"
            : c.TargetModules.Count == 0 ? "(none)" : (c.TargetModulesIsRegex ? "regex " : "") + string.Join(", ", c.TargetModules)));
        // The settings that narrow target_modules, as written (every module shown below passed them).
        foreach (var key in (string[])["exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save"])
            if (c.Raw[key] is { } v && !(v is System.Text.Json.Nodes.JsonArray { Count: 0 }) && v.ToJsonString() != "\"\"")
                info.AddRow(key, Markup.Escape(v.ToJsonString()));
        if (c.RankPattern.Count > 0) info.AddRow("rank_pattern", Markup.Escape(string.Join(", ", c.RankPattern.Select(kv => $"{kv.Key}={kv.Value}"))));
        if (c.AlphaPattern.Count > 0) info.AddRow("alpha_pattern", Markup.Escape(string.Join(", ", c.AlphaPattern.Select(kv => $"{kv.Key}={kv.Value:G}"))));
        if (c.FanInFanOut) info.AddRow("fan_in_fan_out", "true (base weights stored d_in × d_out)");
        if (a.AdapterName != null) info.AddRow("adapter name", Markup.Escape(a.AdapterName));
        console.Write(info);

        var table = new TextTable(("module", false), ("d_out × d_in", true), ("r", true), ("alpha", true), ("scale", true), ("dtype", false), ("size", true));
        long bytes = 0, parameters = 0;
        foreach (var m in a.Modules)
        {
            long size = m.A.ByteLength + m.B.ByteLength;
            bytes += size;
            parameters += m.A.ElementCount + m.B.ElementCount;
            table.Add(m.Path, $"{m.DOut} × {m.DIn}", m.Rank.ToString(), m.Alpha.ToString("G"), m.Scale.ToString("G6"),
                m.A.DType == m.B.DType ? m.A.DType.ToString() : $"{m.A.DType}/{m.B.DType}", Terminal.Bytes(size));
        }
        table.Write(stdout);
        console.MarkupLine($"{Terminal.Count(a.Modules.Count, "module")} ({a.Modules.Count(m => m.Embedding)} of them embeddings), {parameters:N0} parameters, {Terminal.Bytes(bytes)}"
            .Replace(" (0 of them embeddings)", ""));
        if (a.FullTensors.Count == 0) return;
        var full = new TextTable(("full tensor", false), ("what", false), ("shape", false), ("dtype", false), ("size", true), ("file", false));
        foreach (var f in a.FullTensors)
            full.Add(f.Key, f.Kind switch
            {
                FullTensorKind.ModulesToSave => "modules_to_save (merged as the mean)",
                FullTensorKind.Trainable => "trainable (merged as the mean)",
                _ => "base-layer copy (must agree across adapters)",
            }, f.Info.ShapeText, f.Info.DType.ToString(), Terminal.Bytes(f.Info.ByteLength), Path.GetFileName(f.File.Path));
        full.Write(stdout);
        console.MarkupLine($"{Terminal.Count(a.FullTensors.Count, "full tensor")}, {Terminal.Bytes(a.FullTensors.Sum(f => f.Info.ByteLength))}");
    }

    private static void ShowModel(ShardedModel model, IAnsiConsole console, TextWriter stdout)
    {
        bool sharded = model.IndexPath != null;
        console.MarkupLine($"[bold]{(sharded ? "Sharded safetensors model" : "safetensors file")}[/] {Markup.Escape(model.Path)}");
        if (sharded)
        {
            var shards = new Table().Border(TableBorder.Simple).AddColumn("shard").AddColumn(new TableColumn("tensors").RightAligned()).AddColumn(new TableColumn("size").RightAligned());
            foreach (var s in model.Shards)
                shards.AddRow(Markup.Escape(Path.GetFileName(s.Path)), s.Tensors.Count.ToString(), Terminal.Bytes(s.FileLength));
            console.Write(shards);
        }
        var metadata = model.Shards.Count == 1 ? model.Shards[0].Metadata : model.IndexMetadata;
        if (metadata.Count > 0)
        {
            var grid = new Grid().AddColumn().AddColumn();
            foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                grid.AddRow(Markup.Escape(k), Markup.Escape(v.Length > 200 ? v[..200] + "..." : v));
            console.MarkupLine("[bold]metadata[/]");
            console.Write(grid);
        }
        ShowTensors(model.Shards, sharded, console, stdout);
    }

    /// <summary>The table of tensors of one file (or of every shard, with a shard column) and the totals by dtype.</summary>
    private static void ShowTensors(IReadOnlyList<ITensorFile> files, bool sharded, IAnsiConsole console, TextWriter stdout)
    {
        var table = sharded
            ? new TextTable(("tensor", false), ("dtype", false), ("shape", false), ("size", true), ("shard", false))
            : new TextTable(("tensor", false), ("dtype", false), ("shape", false), ("size", true));
        var byType = new SortedDictionary<string, (int Count, long Bytes, long Elements)>(StringComparer.Ordinal);
        foreach (var s in files)
            foreach (var t in s.Tensors)
            {
                if (sharded) table.Add(t.Name, t.DType.ToString(), t.ShapeText, Terminal.Bytes(t.ByteLength), Path.GetFileName(s.Path));
                else table.Add(t.Name, t.DType.ToString(), t.ShapeText, Terminal.Bytes(t.ByteLength));
                var key = t.DType.ToString();
                byType.TryGetValue(key, out var acc);
                byType[key] = (acc.Count + 1, acc.Bytes + t.ByteLength, acc.Elements + t.ElementCount);
            }
        table.Write(stdout);
        int count = byType.Values.Sum(v => v.Count);
        long total = byType.Values.Sum(v => v.Bytes);
        long elements = byType.Values.Sum(v => v.Elements);
        console.MarkupLine($"{Terminal.Count(count, "tensor")}, {elements:N0} elements, {Terminal.Bytes(total)} of data"
            + (byType.Count > 0 ? " (" + string.Join(", ", byType.Select(kv => $"{kv.Key}: {kv.Value.Count}")) + ")" : ""));
    }
}
