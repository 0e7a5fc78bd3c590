using System.Text.Json.Nodes;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Tests.Formats;

/// <summary>
/// An adapter whose config does not target one of its tensors' modules is refused, by PEFT's
/// check_target_module_exists rules (target_modules, exclude_modules, modules_to_save,
/// layers_to_transform / layers_pattern, all-linear); a config PEFT itself refuses is refused.
/// </summary>
public class AdapterTargetingTests
{
    private const string L0Q = "model.layers.0.self_attn.q_proj";
    private const string L0K = "model.layers.0.self_attn.k_proj";
    private const string L1Q = "model.layers.1.self_attn.q_proj";

    /// <summary>A rank-2 adapter on <paramref name="modules"/> (8 × 8 each) with the config edited.</summary>
    private static string Write(TempDir dir, Action<JsonObject> edit, params string[] modules)
    {
        var cfg = AdapterWriter.MakeConfig(2, 4, ["q_proj"], null);
        edit(cfg);
        var tensors = modules.SelectMany(m => new TensorSpec[]
        {
            new(LoraAdapter.KeyA(m), DType.F32, [2, 8]),
            new(LoraAdapter.KeyB(m), DType.F32, [8, 2]),
        });
        return TestAdapters.WriteRaw(dir.Path, cfg, tensors);
    }

    private static JsonNode Json(string text) => JsonNode.Parse(text)!;

    public static TheoryData<string, string, string[], string, string> Untargeted() => new()
    {
        // name, config edits as JSON, modules, first untargeted module, reason fragment
        { "list leaves a module out", """{"target_modules": ["q_proj"]}""", [L0Q, L0K], L0K, "(target_modules [q_proj])" },
        { "list entry must end at a dot", """{"target_modules": ["proj"]}""", [L0Q], L0Q, "(target_modules [proj])" },
        { "layers_to_transform list", """{"target_modules": ["q_proj"], "layers_to_transform": [0]}""", [L0Q, L1Q], L1Q, "layers_to_transform 0: it is in layer 1" },
        { "layers_to_transform int", """{"target_modules": ["q_proj"], "layers_to_transform": 1}""", [L0Q, L1Q], L0Q, "layers_to_transform 1: it is in layer 0" },
        { "layers_pattern finds no index", """{"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": "h"}""", [L0Q], L0Q, "no layer index in the name with layers_pattern [h]" },
        { "layers_pattern list, first match wins", """{"target_modules": ["q_proj"], "layers_to_transform": [2], "layers_pattern": ["h", "layers"]}""", [L0Q], L0Q, "it is in layer 0" },
        { "regex matches nothing", """{"target_modules": ".*\\.v_proj"}""", [L0Q], L0Q, "target_modules regex '.*\\.v_proj' does not match it" },
        { "string is a full match, not a suffix", """{"target_modules": "q_proj"}""", [L0Q], L0Q, "regex 'q_proj'" },
        { "regex must cover the whole name", """{"target_modules": "model\\.layers\\.0"}""", [L0Q], L0Q, "does not match it" },
        { "empty list targets nothing", """{"target_modules": []}""", [L0Q], L0Q, "(target_modules [])" },
        { "exclude_modules exact", """{"target_modules": ["q_proj"], "exclude_modules": ["model.layers.1.self_attn.q_proj"]}""", [L0Q, L1Q], L1Q, "exclude_modules [model.layers.1.self_attn.q_proj] names it" },
        { "exclude_modules suffix", """{"target_modules": ["q_proj", "k_proj"], "exclude_modules": ["self_attn.k_proj"]}""", [L0Q, L0K], L0K, "exclude_modules [self_attn.k_proj]" },
        { "exclude_modules regex", """{"target_modules": ["q_proj"], "exclude_modules": ".*layers\\.1\\..*"}""", [L0Q, L1Q], L1Q, "exclude_modules regex '.*layers\\.1\\..*' matches it" },
        { "exclude wins over an exact target", """{"target_modules": ["model.layers.0.self_attn.q_proj"], "exclude_modules": ["q_proj"]}""", [L0Q], L0Q, "exclude_modules" },
        { "modules_to_save", """{"target_modules": ["q_proj", "k_proj"], "modules_to_save": ["k_proj"]}""", [L0Q, L0K], L0K, "modules_to_save names 'k_proj'" },
        { "modules_to_save covers submodules", """{"target_modules": ["q_proj"], "modules_to_save": ["self_attn"]}""", [L0Q], L0Q, "modules_to_save names 'self_attn'" },
        { "all-linear leaves out lm_head", """{"target_modules": "all-linear"}""", [L0Q, "lm_head"], "lm_head", "target_modules 'all-linear' leaves out the output layer lm_head" },
        { "all-linear leaves out a SEQ_CLS head", """{"target_modules": "all-linear", "task_type": "SEQ_CLS"}""", [L0Q, "score"], "score", "classifier head score" },
        { "layer index past 64 bits", """{"target_modules": ["q_proj"], "layers_to_transform": [0]}""", ["model.layers.99999999999999999999.q_proj"], "model.layers.99999999999999999999.q_proj", "it is in layer 99999999999999999999" },
        { "no target_modules, layers still apply", """{"target_modules": null, "layers_to_transform": [0]}""", [L0Q, L1Q], L1Q, "it is in layer 1" },
    };

    [Theory]
    [MemberData(nameof(Untargeted))]
    public void TensorTheConfigDoesNotTarget_IsRefused_NamingTheFirstOne(string name, string edits, string[] modules, string module, string reason)
    {
        using var dir = new TempDir();
        Write(dir, c => { foreach (var (k, v) in Json(edits).AsObject()) c[k] = v?.DeepClone(); }, modules);
        var e = Assert.Throws<AdapterException>(() => LoraAdapter.Open(dir.Path));
        var weights = dir.File(LoraAdapter.WeightsFileName);
        Assert.True(e.FilePath == weights, $"{name}: {e.Message}");
        Assert.Equal(LoraAdapter.KeyA(module), e.Tensor);
        Assert.StartsWith($"{weights}: {LoraAdapter.KeyA(module)}: not targeted by adapter_config.json (", e.Message);
        Assert.EndsWith(") — PEFT would not load it", e.Message);
        Assert.Contains(reason, e.Message);
    }

    public static TheoryData<string, string, string[]> Targeted() => new()
    {
        { "list, suffix at a dot", """{"target_modules": ["q_proj", "self_attn.k_proj"]}""", [L0Q, L0K, L1Q] },
        { "exact name skips layers_to_transform", """{"target_modules": ["model.layers.1.self_attn.q_proj", "q_proj"], "layers_to_transform": [0]}""", [L0Q, L1Q] },
        { "layers_to_transform holds both", """{"target_modules": ["q_proj"], "layers_to_transform": [1, 0]}""", [L0Q, L1Q] },
        { "layers_to_transform empty list filters nothing", """{"target_modules": ["q_proj"], "layers_to_transform": []}""", [L0Q, L1Q] },
        { "layers_pattern names the layer list", """{"target_modules": ["q_proj"], "layers_to_transform": 1, "layers_pattern": "layers"}""", [L1Q] },
        { "layers_pattern empty string is the default", """{"target_modules": ["q_proj"], "layers_to_transform": [1], "layers_pattern": ""}""", [L1Q] },
        { "default layer regex takes the first number", """{"target_modules": ["up_proj"], "layers_to_transform": [1]}""", ["model.layers.1.mlp.experts.0.up_proj"] },
        { "regex full match", """{"target_modules": ".*\\.(q|k)_proj"}""", [L0Q, L0K, L1Q] },
        { "all-linear, any case", """{"target_modules": "All-Linear"}""", [L0Q, L0K, "model.layers.0.mlp.down_proj"] },
        { "no target_modules: PEFT's per-architecture default, not checkable", """{"target_modules": null}""", [L0Q, "model.layers.0.mlp.gate_proj"] },
        { "exclude_modules empty", """{"target_modules": ["q_proj"], "exclude_modules": ""}""", [L0Q] },
        { "modules_to_save elsewhere", """{"target_modules": ["q_proj"], "modules_to_save": ["lm_head", "score"]}""", [L0Q] },
        { "target_parameters empty", """{"target_modules": ["q_proj"], "target_parameters": []}""", [L0Q] },
    };

    [Theory]
    [MemberData(nameof(Targeted))]
    public void TensorsTheConfigTargets_AreAccepted(string name, string edits, string[] modules)
    {
        using var dir = new TempDir();
        Write(dir, c => { foreach (var (k, v) in Json(edits).AsObject()) c[k] = v?.DeepClone(); }, modules);
        using var a = LoraAdapter.Open(dir.Path);
        Assert.True(modules.Order(StringComparer.Ordinal).SequenceEqual(a.Modules.Select(m => m.Path)), name);
    }

    public static TheoryData<string, string, string> BadConfigs() => new()
    {
        { "regex with layers_to_transform", """{"target_modules": ".*q_proj", "layers_to_transform": [0]}""", "layers_to_transform cannot be used when target_modules is a string" },
        { "all-linear with layers_to_transform", """{"target_modules": "all-linear", "layers_to_transform": 0}""", "layers_to_transform cannot be used when target_modules is a string" },
        { "regex with layers_pattern", """{"target_modules": ".*q_proj", "layers_pattern": "layers"}""", "layers_pattern cannot be used" },
        { "layers_pattern alone", """{"target_modules": ["q_proj"], "layers_pattern": ["layers"]}""", "layers_pattern is set but layers_to_transform is not" },
        { "target_parameters", """{"target_modules": null, "target_parameters": ["mlp.experts.down_proj"]}""", "target_parameters is set ([mlp.experts.down_proj])" },
        { "invalid regex", """{"target_modules": "q_proj("}""", "target_modules 'q_proj(' is not a regular expression copa can read" },
        { "fractional layer", """{"target_modules": ["q_proj"], "layers_to_transform": [0.5]}""", "layers_to_transform holds 0.5, not an integer" },
        { "string layer", """{"target_modules": ["q_proj"], "layers_to_transform": ["0"]}""", "layers_to_transform holds a non-integer" },
        { "exclude_modules a number", """{"target_modules": ["q_proj"], "exclude_modules": 3}""", "exclude_modules is neither a string nor a list of strings" },
        { "layers_pattern with a group of its own", """{"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": "(layers)"}""", "PEFT read 'layers' as the layer index" },
        { "modules_to_save a string", """{"target_modules": ["q_proj"], "modules_to_save": "lm_head"}""", "modules_to_save is not a list of strings" },
    };

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public void ConfigPeftRefuses_IsRefusedNamingTheConfig(string name, string edits, string reason)
    {
        using var dir = new TempDir();
        Write(dir, c => { foreach (var (k, v) in Json(edits).AsObject()) c[k] = v?.DeepClone(); }, L0Q);
        var e = Assert.Throws<AdapterException>(() => LoraAdapter.Open(dir.Path));
        Assert.True(e.FilePath == dir.File(AdapterConfig.FileName), $"{name}: {e.Message}");
        Assert.Null(e.Tensor);
        Assert.Contains(reason, e.Message);
    }

    [Fact]
    public void LongTargetList_IsShortenedInTheMessage()
    {
        using var dir = new TempDir();
        var names = Enumerable.Range(0, 20).Select(i => $"t{i}_proj").ToArray();
        Write(dir, c => c["target_modules"] = new JsonArray(names.Select(n => (JsonNode)n!).ToArray()), L0Q);
        var e = Assert.Throws<AdapterException>(() => LoraAdapter.Open(dir.Path));
        Assert.Contains("(target_modules [t0_proj, t1_proj, t2_proj, t3_proj, t4_proj, t5_proj, t6_proj, t7_proj, ... (20 in all)])", e.Message);
    }
}
