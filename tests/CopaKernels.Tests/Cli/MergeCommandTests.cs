using System.Text.Json.Nodes;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Merge.Streaming;
using CopaKernels.Tests.Formats;
using CopaKernels.Tests.Merge;

namespace CopaKernels.Tests.Cli;

/// <summary><c>copa merge</c>'s contract: YAML config with flag overrides, and one clear line + exit 2 for every bad input.</summary>
public sealed class MergeCommandTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    private string[] Args(string output, params string[] extra)
    {
        var args = new List<string> { "merge", "--out", output, "--quiet" };
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        args.AddRange(extra);
        return args.ToArray();
    }

    private static void AssertInvalid((int Code, string Out, string Err) r, string output, params string[] fragments)
    {
        Assert.True(r.Code == 2, $"exit {r.Code}: {r.Err}");
        var lines = r.Err.Trim().Split('\n');
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
        foreach (var f in fragments) Assert.Contains(f, lines[0]);
        Assert.False(Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any(), "output was written");
    }

    public static TheoryData<string[], string[]> BadFlags() => new()
    {
        { ["--method", "copa", "--density", "1.5"], ["density 1.5"] },
        { ["--method", "copa", "--density", "0"], ["density 0"] },
        { ["--method", "copa", "--clamp", "1"], ["clamp 1"] },
        { ["--method", "copa-official", "--clamp", "0.3"], ["copa-official fixes clamp"] },
        { ["--method", "copa", "--rank", "0"], ["rank '0'"] },
        { ["--method", "copa", "--rank", "many"], ["rank 'many'"] },
        { ["--method", "merge-all"], ["unknown method 'merge-all'"] },
        { ["--method", "copa", "--max-memory", "lots"], ["max-memory 'lots'"] },
        { ["--method", "copa", "--max-memory", "1MiB"], ["below the minimum"] },
        { ["--method", "copa", "--out-dtype", "int8"], ["out-dtype 'int8'"] },
        { ["--method", "copa", "--output", "weights"], ["output 'weights'"] },
        { ["--method", "copa", "--space", "dense"], ["space 'dense'"] },
        { ["--method", "ties", "--weight", "1"], ["1 weights for 3 adapters"] },
        { ["--method", "copa", "--weight", "0", "--weight", "0", "--weight", "0"], ["method copa does not use --weight"] },
        { ["--method", "ties", "--clamp", "0.3"], ["method ties does not use --clamp"] },
        { ["--method", "ties", "--seed", "3"], ["method ties does not use --seed"] },
        { ["--method", "copa", "--space", "delta"], ["method copa does not use --space"] },
        { ["--method", "copa-official", "--normalize", "false"], ["copa-official always normalises"] },
        { ["--method", "ties", "--weight", "1,000", "--weight", "1", "--weight", "1"], ["--weight '1,000' is not a number", "no thousands separators"] },
        { ["--method", "ties", "--weight", "0,5", "--weight", "1", "--weight", "1"], ["--weight '0,5' is not a number"] },
        { ["--method", "copa", "--density", "0,5"], ["--density '0,5' is not a number"] },
        { ["--method", "copa", "--lambda", "1,000"], ["--lambda '1,000' is not a number"] },
        { ["--method", "copa", "--threads", "1,000"], ["--threads '1,000' is not a whole number"] },
        { ["--method", "dare", "--seed", "1,000"], ["--seed '1,000' is not a whole number"] },
        { ["--method", "pcb", "--pcb-ratio", "2"], ["pcb-ratio 2"] },
        { ["--method", "copa", "--output", "model"], ["model output needs --base"] },
        { ["--method", "copa", "--shard-size", "1GB"], ["--shard-size applies to model and delta"] },
        { ["--method", "ties", "--space", "delta"], ["dense ΔW", "use --output model or delta"] },
        { ["--method", "copa", "--rank", "100"], ["--rank 100 is above the merged rank 12"] },
        { ["--method", "copa", "--device", "tpu"], ["unknown device 'tpu'"] },
        { ["--method", "copa", "--bogus"], ["--bogus"] },
        { ["--method", "copa", "--report-spectra", "some"], ["report-spectra 'some' must be few, all or none"] },
    };

    [Theory]
    [MemberData(nameof(BadFlags))]
    public void BadParameter_OneLine_Exit2_NoOutput(string[] extra, string[] fragments)
    {
        var output = fx.NewOutput("bad");
        AssertInvalid(CliRunner.Run(Args(output, extra)), output, fragments);
    }

    [Fact]
    public void MissingAdapter_NamesTheFolder()
    {
        var output = fx.NewOutput("missing");
        var missing = Path.Combine(fx.Root, "no-such-adapter");
        AssertInvalid(CliRunner.Run(Args(output, "--method", "copa", "--adapter", missing)), output, missing, "not found");
    }

    [Fact]
    public void MissingBase_NamesThePath()
    {
        var output = fx.NewOutput("nobase");
        var missing = Path.Combine(fx.Root, "no-such-base");
        AssertInvalid(CliRunner.Run(Args(output, "--method", "copa", "--output", "model", "--base", missing)), output, missing, "base model not found");
    }

    [Fact]
    public void OutputNotEmpty_OrInsideAnInput_IsRefused()
    {
        var output = fx.NewOutput("full");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "keep.txt"), "mine");
        var r = CliRunner.Run(Args(output, "--method", "copa"));
        Assert.Equal(2, r.Code);
        Assert.Contains("not empty", r.Err);
        Assert.Equal("mine", File.ReadAllText(Path.Combine(output, "keep.txt")));

        var inside = Path.Combine(fx.Adapters[0], "merged");
        AssertInvalid(CliRunner.Run(Args(inside, "--method", "copa")), inside, "must not be an input or lie inside one");
    }

    [Fact]
    public void AdapterForAnotherModel_NamesTheBaseTensorAndShapes()
    {
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "out");
        // Same module names, wrong d_in: the base weight's shape does not match.
        var other = Path.Combine(dir.Path, "other");
        var cfg = AdapterWriter.MakeConfig(4, 8, ["q_proj"], null);
        TestAdapters.WriteRaw(other, cfg,
        [
            new TensorSpec(LoraAdapter.KeyA("model.layers.0.self_attn.q_proj"), DType.F32, [4, 65]),
            new TensorSpec(LoraAdapter.KeyB("model.layers.0.self_attn.q_proj"), DType.F32, [64, 4]),
        ]);
        var r = CliRunner.Run("merge", "--method", "copa", "--adapter", other, "--output", "model", "--base", fx.Base, "--out", output);
        AssertInvalid(r, output, "model.layers.0.self_attn.q_proj.weight", "[64, 64]", "64 × 65");
    }

    [Fact]
    public void BaseWithATensorInTwoShards_IsAnInputError_NamingBothShards()
    {
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "out");
        var baseCopy = Path.Combine(dir.Path, "base");
        Directory.CreateDirectory(baseCopy);
        foreach (var f in Directory.GetFiles(fx.Base)) File.Copy(f, Path.Combine(baseCopy, Path.GetFileName(f)));
        var shards = Directory.GetFiles(baseCopy, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        Assert.True(shards.Length >= 2);
        string name;
        using (var f = SafetensorsFile.Open(shards[0])) name = f.Tensors.First(t => t.Name.EndsWith("q_proj.weight")).Name;
        ShardedModelTests.CopyTensorInto(shards[^1], shards[0], name);
        var r = CliRunner.Run("merge", "--method", "copa", "--adapter", fx.Adapters[0], "--output", "model", "--base", baseCopy, "--out", output);
        AssertInvalid(r, output, name, Path.GetFileName(shards[0]), Path.GetFileName(shards[^1]), "two shards");
    }

    [Fact]
    public void MergedAdapter_Reopens_WhenTheInputsNarrowedTheirTargets()
    {
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "out");
        // Exact paths, so layer 1's q_proj is targeted despite layers_to_transform [0]; the written
        // config lists suffix names, which layers_to_transform would then apply to.
        var a = TestAdapters.Write(Path.Combine(dir.Path, "a"), r: 4, seed: 1, editConfig: c =>
        {
            c["target_modules"] = new JsonArray(TestAdapters.SmallModules.Select(m => (JsonNode)m.Path!).ToArray());
            c["layers_to_transform"] = new JsonArray(0);
            c["exclude_modules"] = new JsonArray("k_proj");
            c["modules_to_save"] = new JsonArray("lm_head");
        });
        var b = TestAdapters.Write(Path.Combine(dir.Path, "b"), r: 4, seed: 2, editConfig: c =>
        {
            c["target_modules"] = @".*\.(q_proj|v_proj|up_proj)";
            c["exclude_modules"] = @".*\.k_proj";
        });
        var r = CliRunner.Run("merge", "--method", "copa", "--adapter", a, "--adapter", b, "--out", output, "--quiet");
        Assert.True(r.Code == 0, r.Err);
        using var merged = LoraAdapter.Open(output);
        Assert.Equal(TestAdapters.SmallModules.Select(m => m.Path).Order(StringComparer.Ordinal), merged.Modules.Select(m => m.Path));
        Assert.Equal(["q_proj", "up_proj", "v_proj"], merged.Config.TargetModules);
        foreach (var key in new[] { "layers_to_transform", "exclude_modules", "modules_to_save" })
            Assert.Null(merged.Config.Raw[key]);
    }

    [Fact]
    public void DemoAdapters_AndTheirMerge_PassTheTargetCheck()
    {
        foreach (var a in fx.Adapters)
        {
            using var adapter = LoraAdapter.Open(a);
            Assert.Equal(["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"], adapter.Config.TargetModules);
        }
        var output = fx.NewOutput("targets");
        var r = CliRunner.Run(Args(output, "--method", "copa"));
        Assert.True(r.Code == 0, r.Err);
        using var merged = LoraAdapter.Open(output);
        Assert.Equal(2 * 7, merged.Modules.Count);
    }

    [Fact]
    public void UnmatchedModule_NamesTheAdapterTensor()
    {
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "out");
        var other = Path.Combine(dir.Path, "other");
        TestAdapters.WriteRaw(other, AdapterWriter.MakeConfig(4, 8, ["x_proj"], null),
        [
            new TensorSpec(LoraAdapter.KeyA("model.layers.0.self_attn.x_proj"), DType.F32, [4, 64]),
            new TensorSpec(LoraAdapter.KeyB("model.layers.0.self_attn.x_proj"), DType.F32, [64, 4]),
        ]);
        var r = CliRunner.Run("merge", "--method", "copa", "--adapter", other, "--output", "model", "--base", fx.Base, "--out", output);
        AssertInvalid(r, output, "model.layers.0.self_attn.x_proj.lora_A.weight", "not in the base model");
    }

    [Fact]
    public void AdaptersWithDifferentModules_OrRanks_AreRefusedBeforeAnyWrite()
    {
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "out");
        var a = TestAdapters.Write(Path.Combine(dir.Path, "a"), r: 4);
        var b = TestAdapters.Write(Path.Combine(dir.Path, "b"), r: 6);
        // Per-module errors name the adapter at fault (the first whose rank is not the first's), as every error names a file.
        AssertInvalid(CliRunner.Run("merge", "--method", "copa", "--adapter", a, "--adapter", b, "--out", output), output, $"error: {b}: ", "ranks differ", "normalize");
        AssertInvalid(CliRunner.Run("merge", "--method", "ties", "--adapter", a, "--adapter", a, "--adapter", b, "--out", output), output, $"error: {b}: ", "ranks differ between adapters (4, 4, 6)");
        AssertInvalid(CliRunner.Run("merge", "--method", "copa-official", "--adapter", a, "--adapter", b, "--out", output), output, $"error: {b}: ", "share r and lora_alpha");
        AssertInvalid(CliRunner.Run("merge", "--method", "copa", "--adapter", a, "--adapter", fx.Adapters[0], "--out", output), output, "model.layers.0.", " here but ");
        // Unequal ranks are fine without the normalisation: rank Σ r = 10.
        var ok = CliRunner.Run("merge", "--method", "copa", "--normalize", "false", "--adapter", a, "--adapter", b, "--out", output, "--quiet");
        Assert.True(ok.Code == 0, ok.Err);
        using var merged = LoraAdapter.Open(output);
        Assert.All(merged.Modules, m => Assert.Equal(10, m.Rank));
    }

    [Fact]
    public void DenseModuleAboveTheBudget_IsRefusedAtPlanTime()
    {
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "out");
        var adapters = Enumerable.Range(0, 2).Select(i => Path.Combine(dir.Path, $"a{i}")).ToList();
        foreach (var a in adapters)
            TestAdapters.WriteRaw(a, AdapterWriter.MakeConfig(2, 2, ["up_proj"], null),
            [
                new TensorSpec(LoraAdapter.KeyA("model.layers.0.mlp.up_proj"), DType.BF16, [2, 2048]),
                new TensorSpec(LoraAdapter.KeyB("model.layers.0.mlp.up_proj"), DType.BF16, [2048, 2]),
            ]);
        var args = new List<string> { "merge", "--method", "ties", "--space", "delta", "--output", "delta", "--max-memory", "64MiB", "--out", output };
        foreach (var a in adapters) args.AddRange(["--adapter", a]);
        AssertInvalid(CliRunner.Run(args.ToArray()), output, "model.layers.0.mlp.up_proj", "above --max-memory 64 MiB", "--space factors");
    }

    [Fact]
    public void Yaml_Config_WithFlagOverrides_AndRelativePaths()
    {
        using var dir = new TempDir();
        var yaml = Path.Combine(fx.Root, $"merge-{Guid.NewGuid():N}.yaml");
        var rel = fx.Adapters.Select(a => Path.GetRelativePath(fx.Root, a)).ToList();
        File.WriteAllText(yaml, $"""
            # a mergekit-style config
            method: ties
            adapters:
              - path: {rel[0]}
                weight: 1.0
              - path: {rel[1]}
                weight: 0.5
              - path: {rel[2]}
                weight: 0.25
            density: 0.3
            lambda: 1.5
            out_dtype: f32
            quiet: true
            out: out-from-yaml-{Guid.NewGuid():N}
            """);
        var output = Path.Combine(dir.Path, "flag-wins");
        var (code, _, err) = CliRunner.Run("merge", "--config", yaml, "--density", "0.4", "--out", output);
        Assert.True(code == 0, err);
        var report = MergeReport.FromJson(File.ReadAllText(Path.Combine(output, MergeReport.FileName)));
        Assert.Equal("ties", report.Method);
        Assert.Equal(0.4, Convert.ToDouble(report.Parameters["density"]!.ToString()));
        Assert.Equal(1.5, Convert.ToDouble(report.Parameters["lambda"]!.ToString()));
        Assert.Equal("[1,0.5,0.25]", report.Parameters["weights"]!.ToString()!.Replace(" ", "").Replace("\n", "").Replace("\r", ""));
        Assert.Equal("F32", report.Output.Dtype);
    }

    public static TheoryData<string, string[]> BadYaml() => new()
    {
        { "method: copa\nadapters: [a, b\n", ["not valid YAML", "line"] },
        { "method: copa\ndensty: 0.5\n", ["unknown setting 'densty'", "line 2"] },
        { "method: copa\ndensity: lots\n", ["line 2: density 'lots' is not a number"] },
        { "method: copa\ndensity: 0,5\n", ["line 2: density '0,5' is not a number", "no thousands separators"] },
        { "method: ties\nweights: [1, '1,000', 1]\n", ["line 2: weights '1,000' is not a number"] },
        { "method: copa\ndensity: 1.5\n", ["line 2: density 1.5 must be in (0, 1]"] },
        { "method: ties\nclamp: 0.1\n", ["line 2: method ties does not use clamp"] },
        { "method: copa\nweights: [1, 1, 1]\n", ["line 2: method copa does not use weight"] },
        { "method: ties\nweights: [1, 1]\n", ["line 2: 2 weights for 3 adapters"] },
        { "method: merge-all\n", ["line 1: unknown method 'merge-all'"] },
        { "method: ties\nspace: dense\n", ["line 2: space 'dense' must be factors or delta"] },
        { "method: copa\nrank: many\n", ["line 2: rank 'many'"] },
        { "method: copa\nmax-memory: lots\n", ["line 2: max-memory 'lots'"] },
        { "method: dare\nseed: -1\n", ["line 2: seed must be 0 or more"] },
        { "- copa\n", ["must be a mapping"] },
        { "method: copa\nadapters: {a: 1}\n", ["adapters must be a list"] },
        { "method: copa\nmethod: ties\n", ["Duplicate key", "line 2"] },
        { "", ["empty"] },
        { "models:\n  - model: a\nmerge_method: ties\n", ["line 1: this looks like a mergekit config ('models')", "'adapters:'"] },
        { "method: copa\nreport-spectra: most\n", ["line 2: report-spectra 'most' must be few, all or none"] },
    };

    [Fact]
    public void ReportFlags_AndTheirConfigKeys_Apply()
    {
        var flags = fx.NewOutput("flags");
        Assert.Equal(0, CliRunner.Run(Args(flags, "--method", "copa", "--no-html-report", "--report-spectra", "all")).Code);
        Assert.False(File.Exists(Path.Combine(flags, "merge_report.html")));
        var report = MergeReport.FromJson(File.ReadAllText(Path.Combine(flags, MergeReport.FileName)));
        Assert.Equal(report.Modules.Count, report.Spectra!.Count);

        using var dir = new TempDir();
        var yaml = Path.Combine(dir.Path, "merge.yaml");
        File.WriteAllText(yaml, "method: copa\nno-html-report: false\nreport-spectra: none\n");
        var config = fx.NewOutput("config");
        var args = new List<string> { "merge", "--config", yaml, "--out", config, "--quiet" };
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        Assert.Equal(0, CliRunner.Run(args.ToArray()).Code);
        Assert.True(File.Exists(Path.Combine(config, "merge_report.html")));
        Assert.Null(MergeReport.FromJson(File.ReadAllText(Path.Combine(config, MergeReport.FileName))).Spectra);
    }

    [Fact]
    public void Report_RedrawsAMergeReport_AndRefusesOtherJson()
    {
        var output = fx.NewOutput("redraw");
        Assert.Equal(0, CliRunner.Run(Args(output, "--method", "ties", "--weight", "1", "--weight", "1", "--weight", "1")).Code);
        using var dir = new TempDir();
        var html = Path.Combine(dir.Path, "again.html");
        var (code, stdout, _) = CliRunner.Run("report", Path.Combine(output, MergeReport.FileName), "-o", html);
        Assert.Equal(0, code);
        Assert.Contains("again.html", stdout);
        Assert.Equal(File.ReadAllText(Path.Combine(output, "merge_report.html")), File.ReadAllText(html));
        var other = Path.Combine(dir.Path, "other.json");
        File.WriteAllText(other, "{\"name\": 1}");
        var bad = CliRunner.Run("report", other);
        Assert.Equal(2, bad.Code);
        Assert.Equal($"error: {other}: neither a merge_report.json nor a copa bench --json file", bad.Err.Trim());
        Assert.False(File.Exists(Path.Combine(dir.Path, "other.html")));

        // Hand-edited reports: one line and exit 2 naming what is missing, never a crash.
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(output, MergeReport.FileName)))!.AsObject();
        foreach (var (edit, why) in new (Action<JsonObject>, string)[]
        {
            (r => r["modules"] = null, "a top-level member is null"),
            (r => r["modules"]![0]!.AsObject()["thresholds_a"] = null, "ranks or thresholds missing"),
            (r => r["modules"]![0]!.AsObject()["scales"] = new JsonArray((JsonNode?)null), "a null scale"),
            (r => r["spectra"] = JsonNode.Parse("""[{"path": "m", "adapters": [0], "tasks": [[1], [2]]}]"""), "more task spectra than adapters"),
            (r => r.Remove("summary"), "missing required properties"),
        })
        {
            var copy = json.DeepClone().AsObject();
            edit(copy);
            var file = Path.Combine(dir.Path, "edited.json");
            File.WriteAllText(file, copy.ToJsonString());
            var r = CliRunner.Run("report", file);
            Assert.Equal(2, r.Code);
            Assert.StartsWith($"error: {file}: not a", r.Err.Trim());
            Assert.Contains(why, r.Err);
            Assert.False(File.Exists(Path.Combine(dir.Path, "edited.html")));
        }
    }

    [Theory]
    [MemberData(nameof(BadYaml))]
    public void Yaml_Errors_NameTheFileAndLine(string text, string[] fragments)
    {
        using var dir = new TempDir();
        var yaml = Path.Combine(dir.Path, "merge.yaml");
        File.WriteAllText(yaml, text);
        var output = Path.Combine(dir.Path, "out");
        // The adapters come from flags, so every setting in the file is checked (the plan needs adapters first).
        var args = new List<string> { "merge", "--config", yaml, "--out", output };
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        AssertInvalid(CliRunner.Run(args.ToArray()), output, [yaml, .. fragments]);
    }

    [Fact]
    public void MissingConfigFile_NamesIt()
    {
        var output = fx.NewOutput("nocfg");
        var yaml = Path.Combine(fx.Root, "absent.yaml");
        AssertInvalid(CliRunner.Run("merge", "--config", yaml, "--out", output), output, yaml, "config file not found");
    }

    [Theory]
    [InlineData("TIES", "ties")]
    [InlineData("linear", "task-arithmetic")]
    [InlineData("task_arithmetic", "task-arithmetic")]
    [InlineData("Dare_Ties", "dare-ties")]
    [InlineData("dare_linear", "dare")]
    [InlineData("COPA_OFFICIAL", "copa-official")]
    public void MethodNames_AreCaseInsensitive_WithPeftAndMergekitAliases(string given, string canonical)
    {
        var viaAlias = fx.NewOutput("alias");
        var viaName = fx.NewOutput("name");
        var (code, _, err) = CliRunner.Run(Args(viaAlias, "--method", given));
        Assert.True(code == 0, err);
        (code, _, err) = CliRunner.Run(Args(viaName, "--method", canonical));
        Assert.True(code == 0, err);
        StreamingFixture.AssertSameTensorBytes(Path.Combine(viaAlias, LoraAdapter.WeightsFileName), Path.Combine(viaName, LoraAdapter.WeightsFileName));
        Assert.Equal(canonical, CopaKernels.Merge.Streaming.MergeReport.FromJson(File.ReadAllText(Path.Combine(viaAlias, "merge_report.json"))).Method);
    }

    [Fact]
    public void MergekitStyle_ConfigAndOutAsArguments()
    {
        using var dir = new TempDir();
        var yaml = Path.Combine(dir.Path, "merge.yml");
        File.WriteAllText(yaml, "method: ties\nadapters:\n" + string.Concat(fx.Adapters.Select(a => $"  - {a}\n")));
        var output = Path.Combine(dir.Path, "merged");
        var (code, _, err) = CliRunner.Run("merge", yaml, output, "--quiet");
        Assert.True(code == 0, err);
        Assert.True(File.Exists(Path.Combine(output, LoraAdapter.WeightsFileName)));
        AssertInvalid(CliRunner.Run("merge", yaml, Path.Combine(dir.Path, "again"), "--config", yaml), Path.Combine(dir.Path, "again"), "the config is given twice");
        AssertInvalid(CliRunner.Run("merge", yaml, Path.Combine(dir.Path, "again"), "--out", Path.Combine(dir.Path, "x")), Path.Combine(dir.Path, "again"), "the output is given twice");
    }

    [Fact]
    public void Plain_Run_PrintsPlanAndSummary()
    {
        var output = fx.NewOutput("plain");
        var args = Args(output, "--method", "copa").Where(a => a != "--quiet").ToArray();
        var (code, stdout, err) = CliRunner.Run(args);
        Assert.True(code == 0, err);
        Assert.Contains("plan: copa over 3 adapters, 14 modules", stdout);
        Assert.Contains("merge_report.json", stdout);
        Assert.Contains("merging:", err);
    }

    [Fact]
    public void NoSync_WritesTheSameOutput_AndSaysSoInTheReport()
    {
        var synced = fx.NewOutput("synced");
        var unsynced = fx.NewOutput("unsynced");
        var a = CliRunner.Run(Args(synced, "--method", "copa-official"));
        Assert.True(a.Code == 0, a.Err);
        var b = CliRunner.Run(Args(unsynced, "--method", "copa-official", "--no-sync"));
        Assert.True(b.Code == 0, b.Err);
        Assert.Equal(File.ReadAllBytes(Path.Combine(synced, "adapter_model.safetensors")), File.ReadAllBytes(Path.Combine(unsynced, "adapter_model.safetensors")));
        bool Synced(string dir)
        {
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "merge_report.json")));
            return doc.RootElement.GetProperty("output").GetProperty("synced").GetBoolean();
        }
        Assert.True(Synced(synced));
        Assert.False(Synced(unsynced));
        // Renamed into place all the same: no temporary folder or lock file is left.
        Assert.Empty(Directory.GetFileSystemEntries(Path.GetDirectoryName(unsynced)!, ".copa-*"));
    }

    [Fact]
    public void Demo_Runs_EndToEnd()
    {
        using var dir = new TempDir();
        var demo = Path.Combine(dir.Path, "demo");
        var (code, stdout, err) = CliRunner.Run("demo", "--dir", demo, "--quiet", "--layers", "1");
        Assert.True(code == 0, err);
        Assert.True(File.Exists(Path.Combine(demo, "merged-adapter", MergeReport.FileName)));
        Assert.True(File.Exists(Path.Combine(demo, "merged-model", MergeReport.FileName)));
        Assert.Contains("done.", stdout);
        // A second run replaces its own folder; a foreign folder is never touched.
        Assert.Equal(0, CliRunner.Run("demo", "--dir", demo, "--quiet", "--layers", "1", "--generate-only", "--no-base").Code);
        var foreign = Path.Combine(dir.Path, "foreign");
        Directory.CreateDirectory(foreign);
        File.WriteAllText(Path.Combine(foreign, "notes.txt"), "x");
        var r = CliRunner.Run("demo", "--dir", foreign, "--quiet");
        Assert.Equal(2, r.Code);
        Assert.True(File.Exists(Path.Combine(foreign, "notes.txt")));
    }
}
