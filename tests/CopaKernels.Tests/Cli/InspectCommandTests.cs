using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Formats.Torch;
using CopaKernels.Tests.Formats;

namespace CopaKernels.Tests.Cli;

public class InspectCommandTests
{
    [Fact]
    public void Adapter_ShowsRankAlphaScaleTargetsAndModules()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 4, alpha: 16, dtype: DType.BF16);
        var (code, output, err) = CliRunner.Run("inspect", dir.Path);
        Assert.True(code == 0, err);
        Assert.Contains("LoRA adapter", output);
        Assert.Contains("rank r", output);
        Assert.Contains("lora_alpha", output);
        Assert.Contains("4 (α/r)", output);
        Assert.Contains("q_proj, up_proj, v_proj", output);
        foreach (var m in TestAdapters.SmallModules)
        {
            Assert.Contains(m.Path, output);
            Assert.Contains($"{m.DOut} × {m.DIn}", output);
        }
        Assert.Contains("4 modules", output);
        Assert.Empty(err);
    }

    [Fact]
    public void Adapter_ShowsEmbeddingModules_FullTensors_AndAPickleWeightsFile()
    {
        using var dir = new TempDir();
        var config = AdapterWriter.MakeConfig(4, 8, ["q_proj", "embed_tokens"], null);
        config["modules_to_save"] = new System.Text.Json.Nodes.JsonArray("lm_head");
        TestAdapters.WriteRaw(dir.Path, config,
        [
            new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType.F32, [4, 16]),
            new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", DType.F32, [24, 4]),
            new("base_model.model.model.embed_tokens.lora_embedding_A", DType.F32, [4, 50]),
            new("base_model.model.model.embed_tokens.lora_embedding_B", DType.F32, [16, 4]),
            new("base_model.model.model.embed_tokens.base_layer.weight", DType.F32, [50, 16]),
            new("base_model.model.lm_head.weight", DType.BF16, [50, 16]),
        ]);
        var (code, output, err) = CliRunner.Run("inspect", dir.Path);
        Assert.True(code == 0, err);
        Assert.Contains("adapter_model.safetensors", output);
        Assert.Contains("16 × 50", output);
        Assert.Contains("2 modules (1 of them embeddings)", output);
        Assert.Contains("modules_to_save (merged as the mean)", output);
        Assert.Contains("base-layer copy (must agree across adapters)", output);
        Assert.Contains("2 full tensors", output);

        // The same adapter's factors as a torch.save checkpoint (a real one, torch 2.6).
        using var bin = new TempDir();
        File.WriteAllText(Path.Combine(bin.Path, AdapterConfig.FileName), AdapterWriter.MakeConfig(4, 8, ["q_proj", "v_proj", "up_proj"], null).ToJsonString());
        File.Copy(Path.Combine(AppContext.BaseDirectory, "Fixtures", "torch", "adapter-2.6.bin"), Path.Combine(bin.Path, LoraAdapter.PickleWeightsFileName));
        (code, output, err) = CliRunner.Run("inspect", bin.Path);
        Assert.True(code == 0, err);
        Assert.Contains("adapter_model.bin (PyTorch checkpoint, zip)", output);
        Assert.Contains("3 modules", output);
    }

    [Fact]
    public void Adapter_WithoutLoraAlpha_ShowsPeftsDefault()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 16, editConfig: c => c.Remove("lora_alpha"));
        var (code, output, err) = CliRunner.Run("inspect", dir.Path);
        Assert.True(code == 0, err);
        Assert.Contains("8 (not in the config: PEFT's default)", output);
        Assert.Contains("0.5 (α/r)", output);
    }

    [Fact]
    public void Adapter_ShowsTheSettingsThatNarrowItsTargets()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, editConfig: c =>
        {
            c["layers_to_transform"] = new System.Text.Json.Nodes.JsonArray(0, 1);
            c["exclude_modules"] = "lm_head";
        });
        var (code, output, err) = CliRunner.Run("inspect", dir.Path);
        Assert.True(code == 0, err);
        Assert.Contains("layers_to_transform", output);
        Assert.Contains("[0,1]", output);
        Assert.Contains("\"lm_head\"", output);
        Assert.DoesNotContain("layers_pattern", output);
    }

    [Fact]
    public void Adapter_WithATensorItsConfigDoesNotTarget_ExitsTwo()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, editConfig: c => c["target_modules"] = new System.Text.Json.Nodes.JsonArray("q_proj", "v_proj"));
        var (code, output, err) = CliRunner.Run("inspect", dir.Path);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        var line = Assert.Single(err.TrimEnd('\n').Split('\n'));
        Assert.Equal($"error: {dir.File(LoraAdapter.WeightsFileName)}: base_model.model.model.layers.0.mlp.up_proj.lora_A.weight: "
            + "not targeted by adapter_config.json (target_modules [q_proj, v_proj]) — PEFT would not load it", line);
    }

    [Fact]
    public void SafetensorsFile_ShowsTensorsMetadataAndTotals()
    {
        using var dir = new TempDir();
        var path = dir.File("m.safetensors");
        using (var w = new SafetensorsWriter(path, [new("w", DType.BF16, [3, 5]), new("b", DType.F32, [5])], new Dictionary<string, string> { ["note"] = "hello" }))
        {
            w.AppendSingles("b", new float[5]);
            w.AppendSingles("w", new float[15]);
            w.Commit();
        }
        var (code, output, _) = CliRunner.Run("inspect", path);
        Assert.Equal(0, code);
        Assert.Contains("[3, 5]", output);
        Assert.Contains("BF16", output);
        Assert.Contains("note", output);
        Assert.Contains("hello", output);
        Assert.Contains("2 tensors, 20 elements, 50 B of data", output);
    }

    private static string TorchFixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "torch", name);

    [Fact]
    public void TorchCheckpoint_ShowsTheTableASafetensorsFileShows()
    {
        using var dir = new TempDir();
        var path = dir.File("adapter_model.bin");
        File.Copy(TorchFixture("torch-2.6.bin"), path);
        var (code, output, err) = CliRunner.Run("inspect", path);
        Assert.True(code == 0, err);
        Assert.StartsWith($"PyTorch checkpoint (zip) {path}", output);
        var (stCode, stOutput, _) = CliRunner.Run("inspect", TorchFixture("reference.safetensors"));
        Assert.Equal(0, stCode);
        // The same tensors give the same rows (in the state dict's order here, the file's there) and the same totals.
        using var c = TorchCheckpoint.Open(path);
        string Row(string text, string tensor) => text.Split('\n').Select(l => l.Trim()).Single(l => l.StartsWith(tensor + " ", StringComparison.Ordinal));
        foreach (var t in c.Tensors)
        {
            Assert.Equal(Row(stOutput, t.Name), Row(output, t.Name));
            Assert.Contains(t.ShapeText, Row(output, t.Name));
        }
        Assert.Contains("20 tensors, ", output);
        Assert.Equal(stOutput.TrimEnd().Split('\n')[^1], output.TrimEnd().Split('\n')[^1]);
    }

    [Fact]
    public void TorchCheckpoint_AZipWithAnotherName_IsReadAsOne()
    {
        using var dir = new TempDir();
        var path = dir.File("weights.ckpt");
        File.Copy(TorchFixture("module-1.13.bin"), path);
        var (code, output, err) = CliRunner.Run("inspect", path);
        Assert.True(code == 0, err);
        Assert.Contains("PyTorch checkpoint (zip)", output);
        Assert.Contains("2 tensors, 15 elements, 60 B of data (F32: 2)", output);
    }

    [Fact]
    public void TorchCheckpoint_Legacy_ExitsTwo_WithHowToConvert()
    {
        var path = TorchFixture("legacy-2.6.pt");
        var (code, output, err) = CliRunner.Run("inspect", path);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        var line = Assert.Single(err.TrimEnd('\n').Split('\n'));
        Assert.StartsWith($"error: {path}: a PyTorch checkpoint in the legacy (pre-1.6) format", line);
        Assert.Contains("safetensors.torch.save_file", line);
    }

    [Fact]
    public void ShardedFolder_ListsShards()
    {
        using var dir = new TempDir();
        var specs = Enumerable.Range(0, 6).Select(i => new TensorSpec($"layer.{i}.weight", DType.F16, [16, 16])).ToList();
        using (var w = new ShardedWriter(dir.Path, ShardedWriter.PlanBySize(specs, 1024)))
        {
            foreach (var t in w.WriteOrder) w.For(t.Name).AppendSingles(t.Name, new float[256]);
            w.Commit();
        }
        var (code, output, _) = CliRunner.Run("inspect", dir.Path);
        Assert.Equal(0, code);
        Assert.Contains("Sharded safetensors model", output);
        Assert.Contains("model-00003-of-00003.safetensors", output);
        Assert.Contains("6 tensors", output);

        // An index whose weight map names the last shard first still lists the shards in file order.
        var indexPath = Path.Combine(dir.Path, ShardedModel.IndexFileName);
        var index = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(indexPath))!.AsObject();
        var map = index["weight_map"]!.AsObject().Select(kv => (kv.Key, (string)kv.Value!)).Reverse().ToList();
        var reversed = new System.Text.Json.Nodes.JsonObject();
        foreach (var (k, v) in map) reversed[k] = v;
        index["weight_map"] = reversed;
        File.WriteAllText(indexPath, index.ToJsonString());
        (code, output, _) = CliRunner.Run("inspect", dir.Path);
        Assert.Equal(0, code);
        int first = output.IndexOf("model-00001-of-00003", StringComparison.Ordinal);
        int second = output.IndexOf("model-00002-of-00003", StringComparison.Ordinal);
        int third = output.IndexOf("model-00003-of-00003", StringComparison.Ordinal);
        Assert.True(first >= 0 && first < second && second < third, output);
    }

    [Fact]
    public void ShardedModel_WithATensorInTwoShards_ExitsTwo_NamingBothShards()
    {
        using var dir = new TempDir();
        var specs = Enumerable.Range(0, 6).Select(i => new TensorSpec($"layer.{i}.weight", DType.F16, [16, 16])).ToList();
        using (var w = new ShardedWriter(dir.Path, ShardedWriter.PlanBySize(specs, 1024)))
        {
            foreach (var t in w.WriteOrder) w.For(t.Name).AppendSingles(t.Name, new float[256]);
            w.Commit();
        }
        var first = dir.File("model-00001-of-00003.safetensors");
        var third = dir.File("model-00003-of-00003.safetensors");
        string name;
        using (var f = SafetensorsFile.Open(first)) name = f.Tensors[0].Name;
        ShardedModelTests.CopyTensorInto(third, first, name);
        var (code, output, err) = CliRunner.Run("inspect", dir.Path);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        var line = Assert.Single(err.TrimEnd('\n').Split('\n'));
        Assert.StartsWith($"error: {dir.File(ShardedModel.IndexFileName)}: {name}: ", line);
        Assert.Contains("'model-00001-of-00003.safetensors'", line);
        Assert.Contains("'model-00003-of-00003.safetensors'", line);
    }

    [Fact]
    public void MalformedFile_ExitsTwo_WithOneLineNamingFileAndTensor()
    {
        using var dir = new TempDir();
        var path = dir.File("bad.safetensors");
        File.WriteAllBytes(path, StBytes.Make("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}", 12));
        var (code, output, err) = CliRunner.Run("inspect", path);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        var line = Assert.Single(err.TrimEnd('\n').Split('\n'));
        Assert.Equal($"error: {path}: w: data_offsets cover 12 bytes but F32 [2] needs 8", line);
    }

    [Theory]
    [InlineData("inspect", "/nonexistent/copa/path", "no such file or folder")]
    [InlineData("inspect", null, "Required argument missing")]
    [InlineData("frobnicate", null, "frobnicate")]
    public void UsageAndMissingInput_ExitTwo(string verb, string? arg, string expected)
    {
        var args = arg == null ? new[] { verb } : new[] { verb, arg };
        var (code, _, err) = CliRunner.Run(args);
        Assert.Equal(2, code);
        Assert.StartsWith("error: ", err);
        Assert.Contains(expected, err);
        Assert.Single(err.TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public void HugeHeader_AnswersQuickly_WithoutReadingData()
    {
        // 20,000 tensors claimed over a sparse 1.6 GB data section: only the header is read.
        using var dir = new TempDir();
        var path = dir.File("wide.safetensors");
        var layout = new List<TensorInfo>();
        long off = 0;
        for (int i = 0; i < 20_000; i++)
        {
            layout.Add(new TensorInfo($"model.layers.{i / 10}.proj_{i % 10}.weight", DType.BF16, [200, 200], off, off + 80_000));
            off += 80_000;
        }
        var header = SafetensorsWriter.BuildHeader(layout, null);
        using (var fs = new FileStream(path, FileMode.CreateNew))
        {
            fs.Write(BitConverter.GetBytes((ulong)header.Length));
            fs.Write(header);
            fs.SetLength(8 + header.Length + off);
        }
        var (code, output, err) = CliRunner.Run("inspect", path);
        Assert.True(code == 0, err);
        Assert.Contains("20000 tensors", output);
    }
}

public class DevicesAndBenchCommandTests
{
    [Fact]
    public void Devices_ListsTheCpuWithItsSimdWidth()
    {
        var (code, output, err) = CliRunner.Run("devices");
        Assert.True(code == 0, err);
        Assert.Contains("cpu", output);
        Assert.Contains(CopaKernels.Kernels.Cpu.CpuBackend.MachineSimdWidth, output);
        Assert.Contains("threads", output);
    }

    [Fact]
    public void Devices_ListsEveryIlgpuDevice_AndWhyOneWasSkipped()
    {
        var (code, output, err) = CliRunner.Run("devices");
        Assert.True(code == 0, err);
        var report = CopaKernels.Gpu.IlgpuDevices.Report;
        foreach (var d in report.Devices)
        {
            Assert.Contains(d.Id, output);
            if (!d.Usable) Assert.Contains(d.SkipReason!, output);
        }
        foreach (var note in report.Notes) Assert.Contains(note, output);
        Assert.Contains("auto uses ", output);
    }

    [Theory]
    [InlineData("cuda:97")]
    [InlineData("opencl:97")]
    public void Device_Absent_IsAnInputError_NamingWhatWasFound(string device)
    {
        var e = Assert.Throws<CopaKernels.Formats.CopaInputException>(() => CopaKernels.Gpu.MergeDevices.Open(device, 1));
        Assert.Contains($"device '{device}'", e.Message);
        Assert.Contains("found", e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void Device_Auto_FallsBackToTheCpu_WithoutACudaOrOpenClGpu()
    {
        var devices = CopaKernels.Gpu.IlgpuDevices.Report.Devices;
        bool gpu = devices.Any(d => d.Usable && (d.Kind == CopaKernels.Kernels.BackendKind.Cuda || d.IsGpu));
        using var backend = CopaKernels.Gpu.MergeDevices.Open("auto", 1);
        Assert.Equal(gpu, backend.Kind != CopaKernels.Kernels.BackendKind.Cpu);
    }

    [Theory]
    [InlineData("--ops", "nope", "unknown --ops value 'nope'")]
    [InlineData("--device", "tpu", "unknown device 'tpu'")]
    [InlineData("--device", "cuda:97", "device 'cuda:97'")]
    [InlineData("--device", "opencl:x", "unknown device 'opencl:x'")]
    [InlineData("--threads", "-1", "--threads must be 0 or more")]
    public void Bench_BadArguments_ExitTwo(string option, string value, string expected)
    {
        var (code, _, err) = CliRunner.Run("bench", option, value);
        Assert.Equal(2, code);
        Assert.Contains(expected, err);
    }

    [Fact]
    public void Bench_Tiles_ChecksQueuedAgainstBlockingAndReportsTheRatio()
    {
        // The op throws (exit 1) when the queued schedule's bytes differ from the blocking one's.
        var (code, output, err) = CliRunner.Run("bench", "--device", "cpu", "--ops", "tiles", "--quick");
        Assert.True(code == 0, err);
        Assert.Contains("4096×16×4096 bf16, 8 tiles", output);
        Assert.Contains("× blocking tiles", output);
    }

    [Fact]
    public void Bench_Convert_RunsAndWritesJson()
    {
        using var dir = new TempDir();
        var json = dir.File("bench.json");
        var (code, output, err) = CliRunner.Run("bench", "--ops", "convert", "--quick", "--json", json);
        Assert.True(code == 0, err);
        Assert.Contains("f32→bf16", output);
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json));
        var results = doc.RootElement.GetProperty("results");
        Assert.Equal(2, results.GetArrayLength());
        Assert.True(results[0].GetProperty("Ms").GetDouble() > 0);
    }

    [Fact]
    public void Bench_Select_OnTheCpu_ChecksAgainstTheReference_AndReportsPairedRatiosToSumOfMagnitudes()
    {
        // Small shapes through the op's own code (the CLI's --quick still times 16M): the reference check
        // runs before timing and throws on a mismatch; each row carries the paired ratio.
        var results = new List<CopaKernels.Cli.Benchmarking.BenchResult>();
        using var cpu = new CopaKernels.Kernels.Cpu.CpuBackend(2);
        var bench = new CopaKernels.Cli.Benchmarking.KernelBench(cpu, quick: true, results.Add);
        bench.Select([("16×4096", 16 * 4096), ("300000", 300_000)]);
        Assert.Equal(4, results.Count);
        Assert.Equal(["select-threshold", "select", "select-threshold", "select"], results.Select(r => r.Op));
        foreach (var r in results)
        {
            Assert.True(r.Ms > 0);
            Assert.Equal("× SumOfMagnitudes", r.RatioOf);
            Assert.True(r.Ratio is > 0, $"{r.Op} {r.Shape}: ratio {r.Ratio}");
        }
    }

    [Fact]
    public void Bench_SelectBf16_ChecksAgainstTheReference_AndReportsTheRatioToF32()
    {
        var (code, output, err) = CliRunner.Run("bench", "--ops", "select-bf16", "--quick");
        Assert.True(code == 0, err);
        foreach (var shape in new[] { "16×4096", "4096×16", "14336×16", "1M" })
            Assert.Contains(shape, output);
        Assert.Contains("× the F32 path", output);
    }
}
