using System.Text.Json.Nodes;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Tests.Formats;

public class PeftAdapterTests
{
    [Fact]
    public void ValidAdapter_PairsFactors_MapsBaseTensors_AndComputesScale()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 4, alpha: 8, dtype: DType.BF16);
        using var a = LoraAdapter.Open(dir.Path);
        Assert.Equal(4, a.Config.R);
        Assert.Equal(TestAdapters.SmallModules.Select(m => m.Path).Order(StringComparer.Ordinal), a.Modules.Select(m => m.Path));
        foreach (var m in a.Modules)
        {
            var spec = TestAdapters.SmallModules.Single(s => s.Path == m.Path);
            Assert.Equal(m.Path + ".weight", m.BaseTensor);
            Assert.Equal(spec.DOut, m.DOut);
            Assert.Equal(spec.DIn, m.DIn);
            Assert.Equal(4, m.Rank);
            Assert.Equal(2.0, m.Scale);
            Assert.Equal("base_model.model." + m.Path + ".lora_A.weight", m.A.Name);
        }
        Assert.Equal("test/base", a.Config.BaseModelNameOrPath);
        Assert.Null(a.AdapterName);
    }

    [Fact]
    public void NamedAdapterSubfolder_IsFoundFromItsParent_WhenItIsTheOnlyOne()
    {
        // PEFT saves an adapter named other than "default" to DIR/<name>/.
        using var dir = new TempDir();
        TestAdapters.Write(Path.Combine(dir.Path, "math"), r: 4, alpha: 8);
        Directory.CreateDirectory(Path.Combine(dir.Path, "logs"));
        using (var a = LoraAdapter.Open(dir.Path))
        {
            Assert.Equal(Path.Combine(dir.Path, "math"), a.Folder);
            Assert.Equal(TestAdapters.SmallModules.Length, a.Modules.Count);
        }
        TestAdapters.Write(Path.Combine(dir.Path, "code"), r: 4, alpha: 8);
        var e = Assert.Throws<AdapterException>(() => LoraAdapter.Open(dir.Path));
        Assert.Equal(dir.Path, e.FilePath);
        Assert.Contains("2 named adapters in subfolders (code, math)", e.Message);
        // A config in DIR itself is the default adapter, as PEFT loads it; the subfolders are other adapters.
        TestAdapters.Write(dir.Path, r: 4, alpha: 8);
        using var d = LoraAdapter.Open(dir.Path);
        Assert.Equal(dir.Path, d.Folder);
    }

    [Fact]
    public void RsLora_ScalesByRootOfRank()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 4, alpha: 8, editConfig: c => c["use_rslora"] = true);
        using var a = LoraAdapter.Open(dir.Path);
        Assert.All(a.Modules, m => Assert.Equal(4.0, m.Scale));
    }

    [Fact]
    public void RankAndAlphaPatterns_FollowPeftMatching()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 4, alpha: 8,
            editConfig: c =>
            {
                // The first key in file order that matches wins (an exact path listed first here);
                // a suffix pattern matches at a dot boundary.
                c["rank_pattern"] = new JsonObject { ["model.layers.1.self_attn.q_proj"] = 6, ["q_proj"] = 2 };
                c["alpha_pattern"] = new JsonObject { ["mlp.up_proj"] = 32, ["proj"] = 1 };
            },
            rankOf: p => p switch { "model.layers.0.self_attn.q_proj" => 2, "model.layers.1.self_attn.q_proj" => 6, _ => 4 });
        using var a = LoraAdapter.Open(dir.Path);
        var byPath = a.Modules.ToDictionary(m => m.Path);
        Assert.Equal(2, byPath["model.layers.0.self_attn.q_proj"].Rank);
        Assert.Equal(6, byPath["model.layers.1.self_attn.q_proj"].Rank);
        Assert.Equal(4, byPath["model.layers.0.mlp.up_proj"].Rank);
        Assert.Equal(32.0 / 4, byPath["model.layers.0.mlp.up_proj"].Scale);
        // "proj" does not match "q_proj" at a dot boundary, so v_proj keeps lora_alpha.
        Assert.Equal(8.0 / 4, byPath["model.layers.0.self_attn.v_proj"].Scale);
        Assert.Equal(8.0 / 2, byPath["model.layers.0.self_attn.q_proj"].Scale);
    }

    [Fact]
    public void PatternKeys_FirstMatchInFileOrderWins_EvenOverALaterExactPath()
    {
        // PEFT's get_pattern_key returns the first key whose (.*\.)?(KEY)$ matches: "q_proj" comes
        // first, so layer 1's q_proj gets alpha 32 although its exact path is listed after it.
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 4, alpha: 8, editConfig: c =>
            c["alpha_pattern"] = new JsonObject { ["q_proj"] = 32, ["model.layers.1.self_attn.q_proj"] = 4 });
        using var a = LoraAdapter.Open(dir.Path);
        var byPath = a.Modules.ToDictionary(m => m.Path);
        Assert.Equal(32.0, byPath["model.layers.1.self_attn.q_proj"].Alpha);
        Assert.Equal(32.0, byPath["model.layers.0.self_attn.q_proj"].Alpha);
        Assert.Equal(8.0, byPath["model.layers.0.self_attn.v_proj"].Alpha);
    }

    [Fact]
    public void PatternKeys_ExactPathCountsWhenNoKeyMatchesAsARegex()
    {
        // "layers[1]" does not match itself as a regular expression; PEFT then looks the module
        // path up as it is, and finds it.
        using var dir = new TempDir();
        var cfg = AdapterWriter.MakeConfig(2, 4, ["q_proj"], null, rankPattern: new Dictionary<string, int> { ["model.layers[1].q_proj"] = 3 });
        TestAdapters.WriteRaw(dir.Path, cfg,
        [
            new(LoraAdapter.KeyA("model.layers[1].q_proj"), DType.F32, [3, 8]),
            new(LoraAdapter.KeyB("model.layers[1].q_proj"), DType.F32, [8, 3]),
        ]);
        using var a = LoraAdapter.Open(dir.Path);
        Assert.Equal(3, Assert.Single(a.Modules).Rank);
    }

    [Fact]
    public void PatternKey_ThatIsNotARegex_IsRefused()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 4, alpha: 8, editConfig: c => c["alpha_pattern"] = new JsonObject { ["q_proj("] = 32 });
        var e = Assert.Throws<AdapterException>(() => LoraAdapter.Open(dir.Path));
        Assert.Equal(dir.File(AdapterConfig.FileName), e.FilePath);
        Assert.Contains("alpha_pattern key 'q_proj(' is not a regular expression copa can read", e.Message);
    }

    [Fact]
    public void MissingLoraAlpha_IsPeftsDefault8_NotR()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 16, editConfig: c => c.Remove("lora_alpha"));
        using var a = LoraAdapter.Open(dir.Path);
        Assert.Equal(8.0, a.Config.LoraAlpha);
        Assert.True(a.Config.LoraAlphaIsDefault);
        Assert.All(a.Modules, m => { Assert.Equal(8.0, m.Alpha); Assert.Equal(0.5, m.Scale); });
    }

    [Fact]
    public void MissingR_IsPeftsDefault8_AndIsCheckedAgainstTheWeights()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 8, alpha: 32, editConfig: c => c.Remove("r"));
        using var a = LoraAdapter.Open(dir.Path);
        Assert.Equal(8, a.Config.R);
        Assert.True(a.Config.RIsDefault);
        Assert.False(a.Config.LoraAlphaIsDefault);
        Assert.All(a.Modules, m => { Assert.Equal(8, m.Rank); Assert.Equal(4.0, m.Scale); });
    }

    [Fact]
    public void MissingRAndAlpha_ScaleOne_AsPeftLoadsIt()
    {
        using var dir = new TempDir();
        TestAdapters.Write(dir.Path, r: 8, editConfig: c => { c.Remove("r"); c.Remove("lora_alpha"); c.Remove("use_rslora"); c.Remove("fan_in_fan_out"); });
        using var a = LoraAdapter.Open(dir.Path);
        Assert.False(a.Config.UseRsLora);
        Assert.False(a.Config.FanInFanOut);
        Assert.All(a.Modules, m => Assert.Equal(1.0, m.Scale));
    }

    [Fact]
    public void AdapterNameInKeys_IsStripped()
    {
        using var dir = new TempDir();
        var cfg = AdapterWriter.MakeConfig(2, 2, ["q_proj"], null);
        TestAdapters.WriteRaw(dir.Path, cfg,
        [
            new("base_model.model.model.layers.0.q_proj.lora_A.default.weight", DType.F32, [2, 8]),
            new("base_model.model.model.layers.0.q_proj.lora_B.default.weight", DType.F32, [8, 2]),
        ]);
        using var a = LoraAdapter.Open(dir.Path);
        Assert.Equal("default", a.AdapterName);
        Assert.Equal("model.layers.0.q_proj.weight", Assert.Single(a.Modules).BaseTensor);
    }

    [Fact]
    public void LoraVariantSettings_AtTheirDefaults_AreAccepted()
    {
        // PEFT writes every LoraConfig field; null, false and [] mean the variant is off.
        using var dir = new TempDir();
        var cfg = AdapterWriter.MakeConfig(2, 4, ["q_proj"], null);
        cfg["layer_replication"] = null;
        cfg["alora_invocation_tokens"] = new JsonArray();
        cfg["use_qalora"] = false;
        cfg["use_bdlora"] = null;
        TestAdapters.WriteRaw(dir.Path, cfg, [new(P + ".lora_A.weight", DType.F32, [2, 8]), new(P + ".lora_B.weight", DType.F32, [8, 2])]);
        using var a = LoraAdapter.Open(dir.Path);
        Assert.Single(a.Modules);
    }

    private const string P = "base_model.model.model.layers.0.q_proj";

    public static TheoryData<string, string?, string> BadAdapters() => new()
    {
        { "dora-config", null, "DoRA" },
        { "lora-bias-config", null, "lora_bias" },
        { "magnitude-vector", P + ".lora_magnitude_vector.weight", "DoRA" },
        { "embedding-weight-key", "base_model.model.model.embed_tokens.lora_embedding_A.weight", "not PEFT's key for an embedding" },
        { "embedding-untargeted", "base_model.model.model.embed_tokens.lora_embedding_A", "not targeted" },
        { "embedding-all-linear", "base_model.model.model.embed_tokens.lora_embedding_A", "selects linear layers, not embeddings" },
        { "modules-to-save", "base_model.model.lm_head.weight", "modules_to_save" },
        { "bias-all", "base_model.model.model.layers.0.q_proj.bias", "bias" },
        { "a-without-b", P + ".lora_A.weight", "no matching lora_B" },
        { "b-without-a", P + ".lora_B.weight", "no matching lora_A" },
        { "rank-disagree", P + ".lora_B.weight", "does not match lora_A" },
        { "rank-vs-config", P + ".lora_A.weight", "rank 3 in the weights but 2" },
        { "conv-lora", P + ".lora_A.weight", "not 2-D" },
        { "int-dtype", P + ".lora_A.weight", "not F32, F16 or BF16" },
        { "two-adapter-names", P + ".lora_B.other.weight", "two adapters" },
        { "peft-type", null, "only LORA" },
        { "r-missing", P + ".lora_A.weight", "rank 2 in the weights but 8 in adapter_config.json (r / rank_pattern; it has no 'r', so PEFT uses its default 8)" },
        { "r-null", null, "'r' is null" },
        { "alpha-null", null, "'lora_alpha' is null" },
        { "r-negative", null, "positive integer" },
        { "r-fraction", null, "positive integer" },
        { "alpha-past-double", null, "lora_alpha is 1E+400, beyond what a double holds" },
        { "alpha-pattern-past-double", null, "alpha_pattern['q_proj'] is -1E+999, beyond what a double holds" },
        { "rank-pattern-fraction", null, "rank_pattern holds 2.5; every rank must be a positive integer" },
        { "layer-replication", null, "layer_replication is set: the adapter was trained on a model with replicated layers" },
        { "alora", null, "alora_invocation_tokens is set" },
        { "qalora", null, "use_qalora is set" },
        { "bad-json", null, "not valid JSON" },
        { "no-tensors", null, "no LoRA modules" },
        { "no-config", null, "no adapter_config.json" },
        { "bin-not-a-checkpoint", null, "not a PyTorch zip checkpoint" },
        { "no-weights", null, "no adapter_model.safetensors" },
    };

    [Theory]
    [MemberData(nameof(BadAdapters))]
    public void UnsupportedOrMalformedAdapter_IsRejectedClearly(string kind, string? tensor, string reason)
    {
        using var dir = new TempDir();
        var cfg = AdapterWriter.MakeConfig(2, 4, ["q_proj"], null);
        TensorSpec A(int r = 2, DType d = DType.F32, string name = ".lora_A.weight") => new(P + name, d, [r, 8]);
        TensorSpec B(int r = 2, string name = ".lora_B.weight") => new(P + name, DType.F32, [8, r]);
        List<TensorSpec> tensors = [A(), B()];
        switch (kind)
        {
            case "dora-config": cfg["use_dora"] = true; break;
            case "lora-bias-config": cfg["lora_bias"] = true; break;
            case "magnitude-vector": tensors.Add(new(P + ".lora_magnitude_vector.weight", DType.F32, [8])); break;
            case "embedding-weight-key": tensors.Add(new("base_model.model.model.embed_tokens.lora_embedding_A.weight", DType.F32, [2, 8])); break;
            case "embedding-all-linear":
                cfg["target_modules"] = "all-linear";
                tensors.Add(new("base_model.model.model.embed_tokens.lora_embedding_A", DType.F32, [2, 8]));
                break;
            case "embedding-untargeted": tensors.Add(new("base_model.model.model.embed_tokens.lora_embedding_A", DType.F32, [2, 8])); break;
            case "modules-to-save": tensors.Add(new("base_model.model.lm_head.weight", DType.F32, [8, 8])); break;
            case "bias-all": cfg["bias"] = "all"; tensors.Add(new("base_model.model.model.layers.0.q_proj.bias", DType.F32, [8])); break;
            case "a-without-b": tensors = [A()]; break;
            case "b-without-a": tensors = [B()]; break;
            case "rank-disagree": tensors = [A(), B(3)]; break;
            case "rank-vs-config": tensors = [A(3), B(3)]; break;
            case "conv-lora": tensors = [new(P + ".lora_A.weight", DType.F32, [2, 8, 1, 1]), B()]; break;
            case "int-dtype": tensors = [A(d: DType.I32), B()]; break;
            case "two-adapter-names": tensors = [A(name: ".lora_A.default.weight"), B(name: ".lora_B.other.weight")]; break;
            case "peft-type": cfg["peft_type"] = "IA3"; break;
            case "r-missing": cfg.Remove("r"); break;
            case "r-null": cfg["r"] = null; break;
            case "alpha-null": cfg["lora_alpha"] = null; break;
            case "r-negative": cfg["r"] = -2; break;
            case "r-fraction": cfg["r"] = 2.5; break;
            case "rank-pattern-fraction": cfg["rank_pattern"] = new JsonObject { ["q_proj"] = 2.5 }; break;
            case "layer-replication": cfg["layer_replication"] = new JsonArray(new JsonArray(0, 4), new JsonArray(2, 6)); break;
            case "alora": cfg["alora_invocation_tokens"] = new JsonArray(32000, 13); break;
            case "qalora": cfg["use_qalora"] = true; break;
            case "no-tensors": tensors = []; break;
        }
        TestAdapters.WriteRaw(dir.Path, cfg, tensors);
        switch (kind)
        {
            case "bad-json": File.WriteAllText(dir.File(AdapterConfig.FileName), "{\"r\": 2,"); break;
            // Numbers past double's range read as ±Inf: refused, not merged with an infinite scale.
            case "alpha-past-double": File.WriteAllText(dir.File(AdapterConfig.FileName), cfg.ToJsonString().Replace("\"lora_alpha\":4", "\"lora_alpha\":1E+400")); break;
            case "alpha-pattern-past-double":
                File.WriteAllText(dir.File(AdapterConfig.FileName), cfg.ToJsonString().Replace("\"alpha_pattern\":{}", "\"alpha_pattern\":{\"q_proj\":-1E+999}"));
                break;
            case "no-config": File.Delete(dir.File(AdapterConfig.FileName)); break;
            case "bin-not-a-checkpoint": File.Move(dir.File(LoraAdapter.WeightsFileName), dir.File("adapter_model.bin")); break;
            case "no-weights": File.Delete(dir.File(LoraAdapter.WeightsFileName)); break;
        }
        var e = Assert.ThrowsAny<CopaKernels.Formats.CopaInputException>(() => LoraAdapter.Open(dir.Path));
        Assert.Equal(tensor, e.Tensor);
        Assert.Contains(reason, e.Message);
        Assert.StartsWith(dir.Path, e.FilePath);
        Assert.DoesNotContain('\n', e.Message);
    }
}
