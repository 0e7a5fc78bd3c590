using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace CopaKernels.Formats.Peft;

/// <summary>
/// The fields of a PEFT <c>adapter_config.json</c> that decide how a LoRA is merged. The raw JSON is
/// kept so a merged adapter can carry the first input's other settings through.
/// </summary>
public sealed class AdapterConfig
{
    /// <summary>The file name PEFT uses.</summary>
    public const string FileName = "adapter_config.json";

    /// <summary>
    /// PEFT's default rank. PEFT reads a config by passing its fields to the <c>LoraConfig</c>
    /// dataclass, so a field the file lacks takes the dataclass default (huggingface/peft,
    /// src/peft/tuners/lora/config.py, <c>LoraConfig</c>: <c>r = 8</c>, <c>lora_alpha = 8</c>,
    /// <c>use_rslora = False</c>, <c>fan_in_fan_out = False</c>). A missing <c>r</c> is safe to
    /// default: the rank of every module's factors is checked against it when the adapter is opened.
    /// </summary>
    public const int PeftDefaultR = 8;

    /// <summary>PEFT's default <c>lora_alpha</c> (see <see cref="PeftDefaultR"/>): 8 whatever r is.</summary>
    public const double PeftDefaultLoraAlpha = 8;

    /// <summary>Default rank <c>r</c> (<see cref="PeftDefaultR"/> when the file has none).</summary>
    public int R { get; init; }

    /// <summary>True when the file has no <c>r</c> and <see cref="R"/> is PEFT's default.</summary>
    public bool RIsDefault { get; init; }

    /// <summary>Default <c>lora_alpha</c> (<see cref="PeftDefaultLoraAlpha"/> when the file has none).</summary>
    public double LoraAlpha { get; init; }

    /// <summary>True when the file has no <c>lora_alpha</c> and <see cref="LoraAlpha"/> is PEFT's default.</summary>
    public bool LoraAlphaIsDefault { get; init; }

    /// <summary>Scale α/√r instead of α/r.</summary>
    public bool UseRsLora { get; init; }

    /// <summary>Base weights stored transposed (d_in × d_out), as GPT-2's Conv1D does.</summary>
    public bool FanInFanOut { get; init; }

    /// <summary>Weight-decomposed LoRA (rejected: not merged exactly yet).</summary>
    public bool UseDora { get; init; }

    /// <summary>LoRA with a bias on B (rejected: not merged exactly yet).</summary>
    public bool LoraBias { get; init; }

    /// <summary>PEFT's <c>bias</c> setting: none, all or lora_only.</summary>
    public string Bias { get; init; } = "none";

    /// <summary>PEFT's <c>peft_type</c> (LORA expected), or null when absent.</summary>
    public string? PeftType { get; init; }

    /// <summary>Target modules: names, or one regular expression (as <see cref="Targeting"/> read them).</summary>
    public IReadOnlyList<string> TargetModules => Targeting.TargetModules;

    /// <summary>True when <see cref="TargetModules"/> is a single regular expression string.</summary>
    public bool TargetModulesIsRegex => Targeting.TargetModulesIsString;

    /// <summary>Per-module rank overrides, in file order (key is a module-name pattern).</summary>
    public IReadOnlyList<KeyValuePair<string, int>> RankPattern { get; init; } = [];

    /// <summary>Per-module alpha overrides, in file order.</summary>
    public IReadOnlyList<KeyValuePair<string, double>> AlphaPattern { get; init; } = [];

    /// <summary>The base model named in the config, if any.</summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>Which modules PEFT would put LoRA on, by target_modules, exclude_modules, layers_to_transform...</summary>
    public AdapterTargeting Targeting { get; init; } = null!;

    /// <summary>The whole config as read.</summary>
    public JsonObject Raw { get; init; } = new();

    /// <summary>The rank of module <paramref name="modulePath"/> (rank_pattern, else r).</summary>
    public int RankFor(string modulePath) => Lookup(RankPattern, modulePath, out var v) ? v : R;

    /// <summary>The alpha of module <paramref name="modulePath"/> (alpha_pattern, else lora_alpha).</summary>
    public double AlphaFor(string modulePath) => Lookup(AlphaPattern, modulePath, out var v) ? v : LoraAlpha;

    /// <summary>The LoRA scale α/r (or α/√r with rsLoRA) of a module of rank <paramref name="rank"/>.</summary>
    public double ScaleFor(string modulePath, int rank) =>
        UseRsLora ? AlphaFor(modulePath) / Math.Sqrt(rank) : AlphaFor(modulePath) / rank;

    /// <summary>Each rank_pattern / alpha_pattern key as PEFT's regular expression, compiled once.</summary>
    private Dictionary<string, Regex> _patternKeys = new(StringComparer.Ordinal);

    /// <summary>The config file, for messages.</summary>
    private string? _path;

    /// <summary>
    /// PEFT's pattern rule (huggingface/peft, src/peft/utils/other.py <c>get_pattern_key</c>, used by
    /// src/peft/tuners/lora/model.py <c>LoraModel._create_and_replace</c>): the first key, in file
    /// order, for which <c>re.match(rf"(.*\.)?({key})$", module)</c> succeeds; when none does, the
    /// module path itself is looked up, so an exact key counts only if no earlier key matches.
    /// </summary>
    private bool Lookup<T>(IReadOnlyList<KeyValuePair<string, T>> patterns, string modulePath, out T value)
    {
        foreach (var (k, v) in patterns)
        {
            bool match;
            try { match = _patternKeys[k].IsMatch(modulePath); }
            catch (RegexMatchTimeoutException e)
            {
                throw new AdapterException(_path, null, $"pattern key '{k}' took too long to match '{modulePath}'", e);
            }
            if (match) { value = v; return true; }
        }
        foreach (var (k, v) in patterns)
            if (k == modulePath) { value = v; return true; }
        value = default!;
        return false;
    }

    /// <summary>Compiles every pattern key; one PEFT's <c>re</c> would reject fails PEFT too, so it is refused.</summary>
    private static Dictionary<string, Regex> CompilePatternKeys(AdapterConfig cfg, string path)
    {
        var keys = new Dictionary<string, Regex>(StringComparer.Ordinal);
        void Add(string field, string k)
        {
            if (!keys.ContainsKey(k)) keys[k] = AdapterTargeting.Compile($@"\A(.*\.)?({k})$", field + " key", k, path);
        }
        foreach (var (k, _) in cfg.RankPattern) Add("rank_pattern", k);
        foreach (var (k, _) in cfg.AlphaPattern) Add("alpha_pattern", k);
        return keys;
    }

    /// <summary>Reads and checks a config file.</summary>
    public static AdapterConfig Load(string path)
    {
        JsonObject root;
        try
        {
            var node = JsonNode.Parse(File.ReadAllBytes(path), documentOptions: new JsonDocumentOptions { MaxDepth = 64 });
            root = node as JsonObject ?? throw new AdapterException(path, null, "adapter config is not a JSON object");
        }
        catch (JsonException e) { throw new AdapterException(path, null, $"adapter config is not valid JSON ({e.Message.Split('\n')[0].TrimEnd('.')})", e); }
        catch (FileNotFoundException e) { throw new AdapterException(path, null, "adapter config not found", e); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new AdapterException(path, null, e.Message.TrimEnd('.'), e); }
        return FromJson(root, path);
    }

    /// <summary>Builds a config from parsed JSON (path is for messages).</summary>
    public static AdapterConfig FromJson(JsonObject root, string path)
    {
        string? peftType = Str(root, "peft_type", path);
        if (peftType != null && !string.Equals(peftType, "LORA", StringComparison.OrdinalIgnoreCase))
            throw new AdapterException(path, null, $"peft_type is {peftType}; only LORA adapters can be merged");
        RefuseVariants(root, path);
        double? rField = Required(root, "r", path);
        double rd = rField ?? PeftDefaultR;
        if (rd <= 0 || rd != Math.Floor(rd) || rd > int.MaxValue) throw new AdapterException(path, null, $"r is {rd}; it must be a positive integer");
        int r = (int)rd;
        double? alphaField = Required(root, "lora_alpha", path);
        double alpha = alphaField ?? PeftDefaultLoraAlpha;
        var targeting = AdapterTargeting.FromJson(root, path);
        var cfg = new AdapterConfig
        {
            R = r,
            RIsDefault = rField is null,
            LoraAlpha = alpha,
            LoraAlphaIsDefault = alphaField is null,
            UseRsLora = Bool(root, "use_rslora", path),
            FanInFanOut = Bool(root, "fan_in_fan_out", path),
            UseDora = Bool(root, "use_dora", path),
            LoraBias = Bool(root, "lora_bias", path),
            Bias = Str(root, "bias", path) ?? "none",
            PeftType = peftType,
            // A fractional rank would be cut to an integer without a word: PEFT builds layers of int(r) only by accident.
            RankPattern = Pattern(root, "rank_pattern", path, v => v == Math.Floor(v) && v is > 0 and <= int.MaxValue ? (int)v
                : throw new AdapterException(path, null, $"rank_pattern holds {v.ToString(System.Globalization.CultureInfo.InvariantCulture)}; every rank must be a positive integer")),
            AlphaPattern = Pattern(root, "alpha_pattern", path, v => v),
            BaseModelNameOrPath = Str(root, "base_model_name_or_path", path),
            Targeting = targeting,
            Raw = root,
        };
        cfg._patternKeys = CompilePatternKeys(cfg, path);
        cfg._path = path;
        return cfg;
    }

    /// <summary>
    /// LoraConfig settings (huggingface/peft, src/peft/tuners/lora/config.py) under which the saved factors
    /// are not a plain ΔW = s·B·A on the named base weight, so merging them as one would be wrong without a
    /// word: refused when set. (use_dora, lora_bias and target_parameters are refused where they are read.)
    /// </summary>
    private static readonly (string Key, string Why)[] Variants =
    [
        ("layer_replication", "the adapter was trained on a model with replicated layers, whose layer numbers are not the base's"),
        ("alora_invocation_tokens", "activated LoRA applies only after its invocation tokens, not as a weight update"),
        ("use_qalora", "QA-LoRA's A acts on pooled inputs, not on the base weight's"),
        ("use_bdlora", "BD-LoRA's factors are block-diagonal, not a plain B·A"),
        ("velora_config", "a VeLoRA adapter is not a plain B·A update"),
        ("monteclora_config", "a MonteCLoRA adapter is not a plain B·A update"),
        ("arrow_config", "an Arrow adapter routes between several LoRAs per token"),
    ];

    private static void RefuseVariants(JsonObject root, string path)
    {
        foreach (var (key, why) in Variants)
        {
            if (!root.TryGetPropertyValue(key, out var n) || n is null) continue;
            bool set = n.GetValueKind() switch
            {
                JsonValueKind.False or JsonValueKind.Null => false,
                JsonValueKind.Array => n.AsArray().Count > 0,
                _ => true,
            };
            if (set) throw new AdapterException(path, null, $"{key} is set: {why}; copa merges plain LoRA only");
        }
    }

    private static string? Str(JsonObject o, string key, string path)
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return null;
        return n.GetValueKind() == JsonValueKind.String ? n.GetValue<string>()
            : throw new AdapterException(path, null, $"'{key}' is not a string");
    }

    /// <summary>
    /// A number PEFT cannot do without: absent gives null (the caller applies PEFT's default), but an
    /// explicit null is refused, as PEFT would pass None on and fail computing the scale.
    /// </summary>
    private static double? Required(JsonObject o, string key, string path)
    {
        if (o.TryGetPropertyValue(key, out var n) && n is null)
            throw new AdapterException(path, null, $"'{key}' is null; PEFT needs a number (leave it out for PEFT's default)");
        return Num(o, key, path);
    }

    private static double? Num(JsonObject o, string key, string path)
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return null;
        if (n.GetValueKind() != JsonValueKind.Number) throw new AdapterException(path, null, $"'{key}' is not a number");
        return Finite(n, key, path);
    }

    /// <summary>A JSON number as a double; one past double's range (1e400) reads as ±Inf, which no scale may be.</summary>
    private static double Finite(JsonNode n, string key, string path)
    {
        double v = n.GetValue<double>();
        return double.IsFinite(v) ? v : throw new AdapterException(path, null, $"{key} is {n.ToJsonString()}, beyond what a double holds");
    }

    private static bool Bool(JsonObject o, string key, string path)
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return false;
        return n.GetValueKind() switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new AdapterException(path, null, $"'{key}' is not true or false"),
        };
    }

    private static IReadOnlyList<KeyValuePair<string, T>> Pattern<T>(JsonObject o, string key, string path, Func<double, T> map)
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return [];
        if (n is not JsonObject obj) throw new AdapterException(path, null, $"'{key}' is not an object");
        var list = new List<KeyValuePair<string, T>>();
        foreach (var (k, v) in obj)
        {
            if (v is null || v.GetValueKind() != JsonValueKind.Number)
                throw new AdapterException(path, null, $"{key}['{k}'] is not a number");
            list.Add(new(k, map(Finite(v, $"{key}['{k}']", path))));
        }
        return list;
    }
}
