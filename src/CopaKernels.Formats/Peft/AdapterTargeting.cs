using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace CopaKernels.Formats.Peft;

/// <summary>
/// Which modules an <c>adapter_config.json</c> puts LoRA on, by PEFT's rules, so that a tensor the
/// config does not target is refused instead of merged: PEFT builds the LoRA layers from the config
/// and then loads the weights, so it never loads a tensor of a module the config leaves out.
/// </summary>
/// <remarks>
/// The rules are those of huggingface/peft, src/peft/tuners/tuners_utils.py
/// <c>check_target_module_exists</c>, applied in its order:
/// <list type="number">
/// <item><c>exclude_modules</c>: a string must match the whole module name as a regular expression
/// (<c>re.fullmatch</c>); a list entry matches the name exactly or as a suffix after a <c>.</c>.</item>
/// <item><c>modules_to_save</c>: a module matching <c>(^|.*\.)NAME($|\..*)</c> from its start
/// (<c>re.match</c>) never gets LoRA.</item>
/// <item><c>target_modules</c>: a string is a regular expression matched against the whole name
/// (<c>re.fullmatch</c>, via src/peft/utils/other.py <c>match_target_against_key</c>), except
/// <c>all-linear</c> (any case; src/peft/utils/constants.py <c>INCLUDE_LINEAR_LAYERS_SHORTHAND</c>),
/// which <c>_maybe_include_all_linear_layers</c> turns into every linear layer but the model's output
/// embedding. A list entry equal to the name targets it; otherwise an entry matching as a suffix
/// after a <c>.</c> targets it, subject to <c>layers_to_transform</c>.</item>
/// <item><c>layers_to_transform</c> (an int, or a non-empty list), on suffix matches only: the layer
/// index is the first number <c>N</c> in <c>.*?\.PATTERN\.(N)\.</c> for the first of
/// <c>layers_pattern</c> that matches, or, without <c>layers_pattern</c>, in <c>.*?\.[^.]*\.(N)\.</c>
/// (the first numbered segment); no index means not targeted.</item>
/// </list>
/// The combinations PEFT's <c>LoraConfig.__post_init__</c> (src/peft/tuners/lora/config.py) refuses are
/// refused when the config is read: a string <c>target_modules</c> with <c>layers_to_transform</c> or
/// <c>layers_pattern</c>, and <c>layers_pattern</c> without <c>layers_to_transform</c>.
/// <para>
/// What copa cannot know without the model, and so accepts:
/// <list type="bullet">
/// <item>no <c>target_modules</c>: PEFT then uses a per-architecture default list
/// (<c>LoraModel._prepare_adapter_config</c>, keyed by the base model's <c>model_type</c>, which the
/// adapter does not record). Any module passes that part; exclude_modules, modules_to_save and
/// layers_to_transform still apply, as the defaults are suffix names.</item>
/// <item><c>all-linear</c>: whether a module is linear. Only the output embedding is refused, by the
/// names causal LMs give it (<c>lm_head</c>, GPT-NeoX's <c>embed_out</c>), and, for
/// <c>task_type</c> SEQ_CLS, a top-level <c>score</c> or <c>classifier</c> head
/// (src/peft/utils/constants.py <c>SEQ_CLS_HEAD_NAMES</c>).</item>
/// </list>
/// </para>
/// </remarks>
public sealed class AdapterTargeting
{
    private static readonly TimeSpan MatchTimeout = TimeSpan.FromSeconds(1);

    /// <summary>Last name components PEFT's <c>all-linear</c> leaves out as the output embedding.</summary>
    private static readonly string[] OutputLayerNames = ["lm_head", "embed_out"];

    /// <summary>PEFT's <c>SEQ_CLS_HEAD_NAMES</c>: classifier heads <c>all-linear</c> leaves out for SEQ_CLS.</summary>
    private static readonly string[] SeqClsHeadNames = ["score", "classifier"];

    private readonly IReadOnlyList<string>? _targets;
    private readonly Regex? _targetRegex;
    private readonly bool _allLinear;
    private readonly bool _seqCls;
    private readonly IReadOnlyList<string> _exclude;
    private readonly Regex? _excludeRegex;
    private readonly IReadOnlyList<(string Name, Regex Rx)> _modulesToSave;
    private readonly IReadOnlyList<long>? _layers;
    private readonly IReadOnlyList<(string Pattern, Regex Rx)> _layerPatterns;
    private readonly bool _layerPatternsGiven;
    private readonly string _targetText;
    private readonly string _path;

    private AdapterTargeting(string path, IReadOnlyList<string>? targets, Regex? targetRegex, bool allLinear, bool seqCls,
        IReadOnlyList<string> exclude, Regex? excludeRegex, IReadOnlyList<(string, Regex)> modulesToSave,
        IReadOnlyList<long>? layers, IReadOnlyList<(string, Regex)> layerPatterns, bool layerPatternsGiven, string targetText)
    {
        _layerPatternsGiven = layerPatternsGiven;
        _path = path;
        _targets = targets;
        _targetRegex = targetRegex;
        _allLinear = allLinear;
        _seqCls = seqCls;
        _exclude = exclude;
        _excludeRegex = excludeRegex;
        _modulesToSave = modulesToSave;
        _layers = layers;
        _layerPatterns = layerPatterns;
        _targetText = targetText;
    }

    /// <summary>
    /// The <c>modules_to_save</c> entry whose module holds the tensor at <paramref name="tensorPath"/>
    /// (e.g. <c>lm_head.weight</c> for <c>lm_head</c>), or null: PEFT saves such a module's trained copy
    /// under the module's own keys (src/peft/utils/save_and_load.py <c>get_peft_model_state_dict</c>
    /// drops the <c>modules_to_save.&lt;adapter&gt;</c> part), matched as PEFT matches the module.
    /// </summary>
    public string? ModuleToSave(string tensorPath)
    {
        foreach (var (name, rx) in _modulesToSave)
            if (IsMatch(rx, tensorPath)) return name;
        return null;
    }

    /// <summary><c>target_modules</c> as written: the list's names, or the one string; empty when absent.</summary>
    public IReadOnlyList<string> TargetModules { get; private init; } = [];

    /// <summary>True when <c>target_modules</c> is one string (a regular expression, or <c>all-linear</c>), not a list.</summary>
    public bool TargetModulesIsString { get; private init; }

    /// <summary>True when the config names no <c>target_modules</c> (PEFT's per-architecture default applies).</summary>
    public bool TargetsUnknown => _targets == null && _targetRegex == null && !_allLinear;

    /// <summary>
    /// Null when PEFT would put LoRA on module <paramref name="modulePath"/> (e.g.
    /// <c>model.layers.3.self_attn.q_proj</c>); otherwise which setting leaves it out, for a message.
    /// </summary>
    /// <param name="modulePath">The module path.</param>
    /// <param name="embedding">The module is an embedding (<c>all-linear</c> selects linear layers only).</param>
    public string? WhyNotTargeted(string modulePath, bool embedding = false)
    {
        if (_excludeRegex != null)
        {
            if (IsMatch(_excludeRegex, modulePath)) return $"exclude_modules regex '{_exclude[0]}' matches it";
        }
        else if (_exclude.Count > 0 && Listed(_exclude, modulePath, out _))
            return $"exclude_modules {ListText(_exclude)} names it";

        foreach (var (name, rx) in _modulesToSave)
            if (IsMatch(rx, modulePath)) return $"modules_to_save names '{name}', which PEFT never puts LoRA on";

        if (_allLinear)
        {
            if (embedding) return $"target_modules '{_targetText}' selects linear layers, not embeddings";
            var last = modulePath[(modulePath.LastIndexOf('.') + 1)..];
            if (OutputLayerNames.Contains(last))
                return $"target_modules '{_targetText}' leaves out the output layer {last}";
            if (_seqCls && SeqClsHeadNames.Contains(modulePath))
                return $"target_modules '{_targetText}' leaves out the classifier head {modulePath} of a SEQ_CLS model";
            return null;
        }
        if (_targetRegex != null)
            return IsMatch(_targetRegex, modulePath) ? null : $"target_modules regex '{_targetText}' does not match it";
        if (_targets != null)
        {
            if (!Listed(_targets, modulePath, out bool exact))
                return $"target_modules {ListText(_targets)}";
            if (exact) return null; // an exact name is targeted whatever layers_to_transform says
        }
        return _layers == null ? null : WhyNotInLayers(modulePath);
    }

    private string? WhyNotInLayers(string modulePath)
    {
        var layers = _layers!;
        var what = $"layers_to_transform {(layers.Count == 1 ? layers[0].ToString() : "[" + string.Join(", ", layers) + "]")}";
        Match? m = null;
        foreach (var (_, rx) in _layerPatterns)
        {
            m = Run(rx, modulePath);
            if (m.Success) break;
        }
        if (m is not { Success: true })
        {
            var how = _layerPatternsGiven ? $" with layers_pattern {ListText(_layerPatterns.Select(p => p.Pattern).ToList())}" : "";
            return $"{what}: PEFT finds no layer index in the name{how}";
        }
        // Group 1, as PEFT reads it: a layers_pattern with groups of its own shifts it off the number,
        // and PEFT's int() then fails.
        var digits = m.Groups[1].Value;
        if (!TryLayerIndex(digits, out long index))
            throw new AdapterException(_path, null, $"layers_pattern makes PEFT read '{digits}' as the layer index of {modulePath}; PEFT fails on it");
        return layers.Contains(index) ? null : $"{what}: it is in layer {digits}";
    }

    /// <summary>
    /// Python's <c>int()</c> of a run of decimal digits (any script, as <c>\d</c> matches them); a
    /// number past 64 bits gives <see cref="long.MinValue"/>, which no layer list holds.
    /// </summary>
    private static bool TryLayerIndex(string digits, out long value)
    {
        value = 0;
        if (digits.Length == 0) return false;
        foreach (char c in digits)
            if (!char.IsDigit(c)) return false;
        foreach (char c in digits)
        {
            int d = (int)char.GetNumericValue(c);
            if (value > (long.MaxValue - d) / 10) { value = long.MinValue; return true; }
            value = value * 10 + d;
        }
        return true;
    }

    /// <summary>A list entry equal to the name, or matching it as a suffix after a '.'.</summary>
    private static bool Listed(IReadOnlyList<string> names, string modulePath, out bool exact)
    {
        exact = names.Contains(modulePath);
        if (exact) return true;
        foreach (var n in names)
            if (modulePath.Length > n.Length && modulePath.EndsWith(n, StringComparison.Ordinal) && modulePath[^(n.Length + 1)] == '.')
                return true;
        return false;
    }

    private static string ListText(IReadOnlyList<string> names)
    {
        const int Shown = 8;
        var head = string.Join(", ", names.Take(Shown));
        return names.Count <= Shown ? $"[{head}]" : $"[{head}, ... ({names.Count} in all)]";
    }

    private bool IsMatch(Regex rx, string s) => Run(rx, s).Success;

    private Match Run(Regex rx, string s)
    {
        try { return rx.Match(s); }
        catch (RegexMatchTimeoutException e)
        {
            throw new AdapterException(_path, null, $"regular expression '{rx}' took over {MatchTimeout.TotalSeconds:G} s on '{s}'", e);
        }
    }

    /// <summary>Reads the targeting fields of a config (path is for messages).</summary>
    internal static AdapterTargeting FromJson(JsonObject root, string path)
    {
        var (targets, targetIsString) = StringOrList(root, "target_modules", path);
        var (exclude, excludeIsString) = StringOrList(root, "exclude_modules", path);
        var (patterns, patternIsString) = StringOrList(root, "layers_pattern", path);
        var modulesToSave = StringList(root, "modules_to_save", path);
        var targetParameters = StringList(root, "target_parameters", path);
        var layers = Layers(root, path);

        // LoRA on bare nn.Parameters (MoE expert tensors) is not a B·A added to a .weight; PEFT's own
        // add_weighted_adapter refuses to combine such adapters too (src/peft/tuners/lora/model.py).
        if (targetParameters is { Count: > 0 })
            throw new AdapterException(path, null, $"target_parameters is set ({ListText(targetParameters)}): LoRA on parameters (e.g. MoE experts) is not supported");

        // LoraConfig.__post_init__ (src/peft/tuners/lora/config.py) refuses these, so PEFT cannot load them.
        // Python truthiness decides: "" and [] count as unset there, null/absent is None.
        bool layersGiven = layers != null;
        bool patternGiven = patterns != null;
        bool patternSet = patterns is { Count: > 0 } && !(patternIsString && patterns[0].Length == 0);
        if (targetIsString && layersGiven)
            throw new AdapterException(path, null, "layers_to_transform cannot be used when target_modules is a string (PEFT refuses this config)");
        if (targetIsString && patternGiven)
            throw new AdapterException(path, null, "layers_pattern cannot be used when target_modules is a string (PEFT refuses this config)");
        if (patternSet && !layersGiven)
            throw new AdapterException(path, null, "layers_pattern is set but layers_to_transform is not (PEFT refuses this config)");

        Regex? targetRegex = null;
        bool allLinear = false;
        string targetText = "";
        if (targetIsString)
        {
            targetText = targets![0];
            if (string.Equals(targetText, "all-linear", StringComparison.OrdinalIgnoreCase)) allLinear = true;
            else targetRegex = Compile($@"\A(?:{targetText})\z", "target_modules", targetText, path);
        }
        Regex? excludeRegex = null;
        IReadOnlyList<string> excludeList = [];
        if (excludeIsString)
        {
            if (exclude![0].Length > 0)
            {
                excludeRegex = Compile($@"\A(?:{exclude[0]})\z", "exclude_modules", exclude[0], path);
                excludeList = exclude; // its one entry is the regex, for messages
            }
        }
        else if (exclude != null) excludeList = exclude;
        // NAME is spliced in ungrouped, as PEFT does, so an alternation in it means what it means there.
        var saves = (modulesToSave ?? []).Select(m => (m, Compile($@"\A(?:(^|.*\.){m}($|\..*))", "modules_to_save", m, path))).ToList();
        // Without layers_pattern ("" and [] included) PEFT takes the first numbered segment.
        var layerPatterns = patternSet
            ? patterns!.Select(p => (p, Compile($@"\A(?:.*?\.{p}\.(\d+)\.)", "layers_pattern", p, path))).ToList()
            : [(string.Empty, new Regex(@"\A(?:.*?\.[^.]*\.(\d+)\.)", RegexOptions.CultureInvariant, MatchTimeout))];
        // An empty list filters nothing, as in PEFT (is_using_layer_indexes).
        var useLayers = layers is { Count: > 0 } ? layers : null;
        bool seqCls = root["task_type"] is JsonValue tv && tv.GetValueKind() == JsonValueKind.String && tv.GetValue<string>() == "SEQ_CLS";

        return new AdapterTargeting(path, targetIsString ? null : targets, targetRegex, allLinear, seqCls,
            excludeList, excludeRegex, saves, useLayers, layerPatterns, patternSet, targetText)
        {
            TargetModules = targets ?? [],
            TargetModulesIsString = targetIsString,
        };
    }

    /// <summary>A config's regular expression, with PEFT's one-second guard; one .NET cannot read is an input error naming <paramref name="field"/>.</summary>
    internal static Regex Compile(string pattern, string field, string source, string path)
    {
        try { return new Regex(pattern, RegexOptions.CultureInvariant, MatchTimeout); }
        catch (ArgumentException e)
        {
            throw new AdapterException(path, null, $"{field} '{source}' is not a regular expression copa can read ({e.Message.Split('\n')[0].TrimEnd('.')})", e);
        }
    }

    /// <summary>A string (returned as a one-item list, flag true), a list of strings, or null when absent.</summary>
    private static (IReadOnlyList<string>?, bool) StringOrList(JsonObject o, string key, string path)
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return (null, false);
        if (n.GetValueKind() == JsonValueKind.String) return ([n.GetValue<string>()], true);
        if (n is JsonArray) return (StringList(o, key, path), false);
        throw new AdapterException(path, null, $"{key} is neither a string nor a list of strings");
    }

    private static IReadOnlyList<string>? StringList(JsonObject o, string key, string path)
    {
        if (!o.TryGetPropertyValue(key, out var n) || n is null) return null;
        if (n is not JsonArray a) throw new AdapterException(path, null, $"{key} is not a list of strings");
        return a.Select(x => x is not null && x.GetValueKind() == JsonValueKind.String ? x.GetValue<string>()
            : throw new AdapterException(path, null, $"{key} holds a non-string")).ToList();
    }

    /// <summary><c>layers_to_transform</c>: an integer or a list of integers, or null when absent.</summary>
    private static IReadOnlyList<long>? Layers(JsonObject o, string path)
    {
        if (!o.TryGetPropertyValue("layers_to_transform", out var n) || n is null) return null;
        if (n.GetValueKind() == JsonValueKind.Number) return [Integer(n, path)];
        if (n is JsonArray a) return a.Select(x => x is not null && x.GetValueKind() == JsonValueKind.Number ? Integer(x, path)
            : throw new AdapterException(path, null, "layers_to_transform holds a non-integer")).ToList();
        throw new AdapterException(path, null, "layers_to_transform is neither an integer nor a list of integers");
    }

    private static long Integer(JsonNode n, string path)
    {
        double d = n.GetValue<double>();
        if (d != Math.Floor(d) || Math.Abs(d) > 1e15)
            throw new AdapterException(path, null, $"layers_to_transform holds {n.ToJsonString()}, not an integer");
        return (long)d;
    }
}
