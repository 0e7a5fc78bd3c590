using System.Text.Json.Nodes;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Tests.Cli;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// An adapter saved by torch.save (<c>adapter_model.bin</c>, with LLaVA's <c>non_lora_trainables.bin</c>)
/// merges to exactly the bytes the same adapter in safetensors does, in every output. The checkpoints are
/// real ones, written by torch 1.13 and 2.6 (Fixtures/torch/make_fixtures.py); the safetensors twin is
/// made here from reference.safetensors, which holds the same tensors with the same bits.
/// </summary>
public sealed class PickleAdapterTests
{
    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "torch", name);

    private const string L0 = "model.layers.0.";

    private static JsonObject Config() => AdapterWriter.MakeConfig(4, 8, ["q_proj", "v_proj", "up_proj"], "test/base");

    /// <summary>The .bin adapter folder: the fixture's checkpoint as adapter_model.bin, and LLaVA's trainables beside it.</summary>
    private static string BinAdapter(string folder, string version)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, AdapterConfig.FileName), Config().ToJsonString());
        File.Copy(Fixture($"adapter-{version}.bin"), Path.Combine(folder, LoraAdapter.PickleWeightsFileName));
        File.Copy(Fixture($"non-lora-trainables-{version}.bin"), Path.Combine(folder, LoraAdapter.TrainablesName + ".bin"));
        return folder;
    }

    /// <summary>The same adapter in safetensors: the LoRA tensors copied byte for byte from reference.safetensors.</summary>
    private static string SafetensorsAdapter(string folder)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, AdapterConfig.FileName), Config().ToJsonString());
        using (var reference = SafetensorsFile.Open(Fixture("reference.safetensors")))
        {
            var lora = reference.Tensors.Where(t => t.Name.Contains(".lora_")).ToList();
            using var w = new SafetensorsWriter(Path.Combine(folder, LoraAdapter.WeightsFileName), lora.Select(t => new TensorSpec(t.Name, t.DType, t.Shape)));
            foreach (var t in w.Layout)
            {
                var bytes = new byte[t.ByteLength];
                reference.ReadBytes(reference.Get(t.Name), 0, bytes);
                w.Append(t.Name, bytes);
            }
            w.Commit();
        }
        File.Copy(Fixture("non-lora-trainables.safetensors"), Path.Combine(folder, LoraAdapter.TrainablesName + ".safetensors"));
        return folder;
    }

    /// <summary>A second adapter of the same shapes (safetensors), so the merge has two tasks.</summary>
    private static string OtherAdapter(string folder)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, AdapterConfig.FileName), Config().ToJsonString());
        using var st = SafetensorsFile.Open(Fixture("reference.safetensors"));
        var rng = new Random(5);
        using (var w = new SafetensorsWriter(Path.Combine(folder, LoraAdapter.WeightsFileName),
                   st.Tensors.Where(t => t.Name.Contains(".lora_")).Select(t => new TensorSpec(t.Name, DType.BF16, t.Shape))))
        {
            foreach (var t in w.Layout) w.AppendSingles(t.Name, Enumerable.Range(0, (int)t.ElementCount).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray());
            w.Commit();
        }
        using (var w = new SafetensorsWriter(Path.Combine(folder, LoraAdapter.TrainablesName + ".safetensors"),
                   [new TensorSpec("base_model.model.model.mm_projector.0.weight", DType.BF16, [16, 8]), new TensorSpec("base_model.model.model.mm_projector.0.bias", DType.BF16, [16])]))
        {
            foreach (var t in w.Layout) w.AppendSingles(t.Name, Enumerable.Range(0, (int)t.ElementCount).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray());
            w.Commit();
        }
        return folder;
    }

    /// <summary>A base with the three weights and the projector.</summary>
    private static string Base(string folder)
    {
        Directory.CreateDirectory(folder);
        var specs = new TensorSpec[]
        {
            new(L0 + "self_attn.q_proj.weight", DType.BF16, [16, 16]), new(L0 + "self_attn.v_proj.weight", DType.BF16, [24, 16]),
            new(L0 + "mlp.up_proj.weight", DType.BF16, [32, 16]), new("model.mm_projector.0.weight", DType.BF16, [16, 8]),
            new("model.mm_projector.0.bias", DType.BF16, [16]), new("model.norm.weight", DType.BF16, [16]),
        };
        var rng = new Random(9);
        using var w = new SafetensorsWriter(Path.Combine(folder, "model.safetensors"), specs);
        foreach (var t in w.Layout) w.AppendSingles(t.Name, Enumerable.Range(0, (int)t.ElementCount).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray());
        w.Commit();
        return folder;
    }

    /// <summary>Every file of an output but the report (which names the inputs), by name.</summary>
    private static Dictionary<string, byte[]> Files(string dir) =>
        Directory.GetFiles(dir).Where(f => Path.GetFileName(f) is not ("merge_report.json" or "merge_report.html")).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);

    [Theory]
    [InlineData("1.13", "copa", "adapter")]
    [InlineData("2.6", "copa", "adapter")]
    [InlineData("2.6", "copa-official", "adapter")]
    [InlineData("2.6", "ties", "model")]
    [InlineData("1.13", "task-arithmetic", "model")]
    [InlineData("2.6", "dare", "delta")]
    public void BinAdapter_MergesToTheSameBytes_AsItsSafetensorsTwin(string version, string method, string mode)
    {
        using var dir = new TempDir();
        var bin = BinAdapter(Path.Combine(dir.Path, "bin"), version);
        var st = SafetensorsAdapter(Path.Combine(dir.Path, "st"));
        var other = OtherAdapter(Path.Combine(dir.Path, "other"));
        var baseDir = Base(Path.Combine(dir.Path, "base"));
        if (mode == "delta")
        {
            // Delta output holds ΔW only: the trained projector would be refused, so these adapters go without it.
            File.Delete(Path.Combine(bin, LoraAdapter.TrainablesName + ".bin"));
            File.Delete(Path.Combine(st, LoraAdapter.TrainablesName + ".safetensors"));
            File.Delete(Path.Combine(other, LoraAdapter.TrainablesName + ".safetensors"));
        }
        Dictionary<string, byte[]> Merge(string first, string label)
        {
            var output = Path.Combine(dir.Path, label);
            var args = new List<string> { "merge", "--method", method, "--adapter", first, "--adapter", other, "--out", output, "--output", mode, "--quiet" };
            if (mode == "model") args.AddRange(["--base", baseDir]);
            if (method == "dare") args.AddRange(["--seed", "4"]);
            var (code, _, err) = CliRunner.Run(args.ToArray());
            Assert.True(code == 0, err);
            return Files(output);
        }
        var fromBin = Merge(bin, "from-bin");
        var fromSt = Merge(st, "from-st");
        Assert.Equal(fromSt.Keys.Order(StringComparer.Ordinal), fromBin.Keys.Order(StringComparer.Ordinal));
        foreach (var (name, bytes) in fromSt)
        {
            if (name.EndsWith(".safetensors", StringComparison.Ordinal))
            {
                // The provenance in the header names the input folders; the tensors must be the same, every byte.
                using var a = SafetensorsFile.Open(Path.Combine(dir.Path, "from-st", name));
                using var b = SafetensorsFile.Open(Path.Combine(dir.Path, "from-bin", name));
                Assert.Equal(a.Tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Shape), t.Begin, t.End)),
                    b.Tensors.Select(t => (t.Name, t.DType, string.Join(",", t.Shape), t.Begin, t.End)));
                StreamingFixture.AssertSameTensorBytes(a.Path, b.Path, $"{name}: ");
            }
            else Assert.True(bytes.AsSpan().SequenceEqual(fromBin[name]), $"{name} differs");
        }
        if (mode == "adapter")
        {
            Assert.Contains(LoraAdapter.TrainablesName + ".safetensors", fromBin.Keys);
            Assert.Contains(AdapterConfig.FileName, fromBin.Keys);
        }
    }
}
