using System.Text.Json;
using System.Text.Json.Nodes;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Formats.Peft;

/// <summary>A module to be written into an adapter: path, output and input dimensions, rank.</summary>
/// <param name="Path">Module path (no <c>base_model.model.</c> prefix).</param>
/// <param name="DOut">Rows of B.</param>
/// <param name="DIn">Columns of A.</param>
/// <param name="Rank">Rank r.</param>
/// <param name="Embedding">An embedding's LoRA: written under PEFT's <c>lora_embedding_A</c>/<c>lora_embedding_B</c> keys.</param>
public sealed record AdapterModuleSpec(string Path, long DOut, long DIn, int Rank, bool Embedding = false);

/// <summary>
/// Writes a PEFT adapter folder: <c>adapter_config.json</c> and a streamed
/// <c>adapter_model.safetensors</c> whose keys are <c>base_model.model.PATH.lora_A.weight</c> /
/// <c>lora_B.weight</c>. Factor data is appended through <see cref="Weights"/> in its layout order.
/// </summary>
public sealed class AdapterWriter : IDisposable
{
    private readonly string _folder;

    /// <summary>Declares the modules and opens the weights file (<paramref name="flushToDisk"/>: see <see cref="SafetensorsWriter"/>).</summary>
    /// <param name="folder">The adapter folder to write into.</param>
    /// <param name="config">The config, written at <see cref="Commit"/>.</param>
    /// <param name="modules">The LoRA modules.</param>
    /// <param name="dtype">The factors' dtype.</param>
    /// <param name="metadata">The weights file's <c>__metadata__</c>.</param>
    /// <param name="flushToDisk">See <see cref="SafetensorsWriter"/>.</param>
    /// <param name="fullTensors">Full tensors written beside the factors under their own keys (modules_to_save, base-layer copies).</param>
    public AdapterWriter(string folder, JsonObject config, IEnumerable<AdapterModuleSpec> modules, DType dtype,
        IReadOnlyDictionary<string, string>? metadata = null, bool flushToDisk = true, IEnumerable<TensorSpec>? fullTensors = null)
    {
        _folder = folder;
        Config = config;
        var specs = new List<TensorSpec>();
        foreach (var m in modules)
        {
            specs.Add(new TensorSpec(LoraAdapter.KeyA(m.Path, m.Embedding), dtype, [m.Rank, m.DIn]));
            specs.Add(new TensorSpec(LoraAdapter.KeyB(m.Path, m.Embedding), dtype, [m.DOut, m.Rank]));
        }
        if (fullTensors != null) specs.AddRange(fullTensors);
        Weights = new SafetensorsWriter(Path.Combine(folder, LoraAdapter.WeightsFileName), specs, metadata, flushToDisk);
    }

    /// <summary>The adapter_config.json content, written at <see cref="Commit"/> (so it may be completed while the weights stream).</summary>
    public JsonObject Config { get; set; }

    /// <summary>The weights writer (append factor data in its <see cref="SafetensorsWriter.Layout"/> order).</summary>
    public SafetensorsWriter Weights { get; }

    /// <summary>
    /// A LoRA config in PEFT's shape. Fields of <paramref name="template"/> (e.g. the first input
    /// adapter's config) are kept, then r, lora_alpha and the rest are set; <paramref name="targetModules"/>
    /// (names matched as a suffix after a '.', or whole paths) must cover every module written, and the
    /// template's exclude_modules, layers_to_transform, layers_pattern, modules_to_save and
    /// target_parameters are cleared so that nothing narrows them; rank_pattern and
    /// alpha_pattern are replaced by the given ones (module path → value, for the modules whose rank or
    /// alpha differs from <paramref name="r"/> / <paramref name="loraAlpha"/>; empty by default).
    /// </summary>
    public static JsonObject MakeConfig(int r, double loraAlpha, IEnumerable<string> targetModules, string? baseModel,
        JsonObject? template = null, bool useRsLora = false,
        IReadOnlyDictionary<string, int>? rankPattern = null, IReadOnlyDictionary<string, double>? alphaPattern = null)
    {
        var c = template?.DeepClone().AsObject() ?? new JsonObject();
        c["peft_type"] = "LORA";
        c["task_type"] ??= "CAUSAL_LM";
        c["r"] = r;
        c["lora_alpha"] = Number(loraAlpha);
        c["use_rslora"] = useRsLora;
        c["target_modules"] = new JsonArray(targetModules.Distinct().Order(StringComparer.Ordinal).Select(t => (JsonNode)t!).ToArray());
        // target_modules alone says what the written tensors cover. A template's narrowing fields
        // described its own tensors, not these: kept, they could leave out a written module (a
        // layer another input adds, a module it excluded) and PEFT would drop that module's tensors.
        // modules_to_save goes too: copa never writes those modules' weights.
        foreach (var key in (string[])["exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save", "target_parameters"])
            if (c.ContainsKey(key)) c[key] = null;
        // Sorted by key (strings, not key-value pairs: no generic code over value types to compile).
        var rp = new JsonObject();
        if (rankPattern != null)
            foreach (var k in rankPattern.Keys.Order(StringComparer.Ordinal)) rp[k] = rankPattern[k];
        var ap = new JsonObject();
        if (alphaPattern != null)
            foreach (var k in alphaPattern.Keys.Order(StringComparer.Ordinal)) ap[k] = Number(alphaPattern[k]);
        c["rank_pattern"] = rp;
        c["alpha_pattern"] = ap;
        c["use_dora"] = false;
        c["bias"] = "none";
        c["lora_dropout"] ??= 0.0;
        c["fan_in_fan_out"] ??= false;
        c["inference_mode"] = true;
        if (baseModel != null) c["base_model_name_or_path"] = baseModel;
        return c;
    }

    private static JsonNode Number(double v) =>
        v == Math.Floor(v) && Math.Abs(v) < 1e15 ? JsonValue.Create((long)v) : JsonValue.Create(v);

    /// <summary>Writes the config and completes the weights file.</summary>
    public void Commit()
    {
        File.WriteAllText(Path.Combine(_folder, AdapterConfig.FileName),
            Config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        Weights.Commit();
    }

    /// <inheritdoc/>
    public void Dispose() => Weights.Dispose();
}
