using System.Globalization;
using CopaKernels.Formats;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Merge.Streaming;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace CopaKernels.Merge;

/// <summary>
/// A <c>merge.yaml</c>, as <c>copa merge --config</c> reads it: the same settings as the command's flags,
/// with their names (<c>pcb-ratio</c> or <c>pcb_ratio</c>). Adapters are a list of paths or of
/// <c>{path, weight}</c> maps. Relative paths are taken relative to the YAML file's folder, so a
/// config works from any working directory. Unknown keys are errors (a typo must not be ignored), and
/// every error names the file and the setting's line. <see cref="ToRequest"/> gives the merge it describes.
/// </summary>
public sealed class MergeConfig
{
    /// <summary>Every key a config may hold, in the flags' spelling.</summary>
    public static readonly string[] Keys =
    [
        "method", "adapters", "weights", "out", "output", "base", "rank", "space", "density", "lambda", "clamp",
        "normalize", "pcb-ratio", "seed", "device", "threads", "max-memory", "out-dtype", "shard-size", "quiet", "no-sync", "no-html-report", "report-spectra",
    ];

    private readonly Dictionary<string, (YamlNode Node, string Text)> _values = new(StringComparer.Ordinal);

    private MergeConfig(string path) => FilePath = path;

    /// <summary>The config file.</summary>
    public string FilePath { get; }

    /// <summary>Adapter paths from the file (resolved), or null.</summary>
    public List<string>? Adapters { get; private set; }

    /// <summary>Weights from the adapters' maps or the weights list, or null.</summary>
    public List<double>? Weights { get; private set; }

    /// <summary>Reads and checks the file.</summary>
    public static MergeConfig Load(string path)
    {
        if (!File.Exists(path)) throw new CopaInputException(path, null, "config file not found");
        var config = new MergeConfig(path);
        var yaml = new YamlStream();
        try
        {
            using var reader = new StreamReader(path);
            yaml.Load(reader);
        }
        catch (YamlException e)
        {
            throw new CopaInputException(path, null, $"not valid YAML at line {e.Start.Line}, column {e.Start.Column}: {(e.InnerException?.Message ?? e.Message).ReplaceLineEndings(" ")}");
        }
        catch (IOException e) { throw new CopaInputException(path, null, $"cannot read: {e.Message}"); }
        if (yaml.Documents.Count == 0) throw new CopaInputException(path, null, "config file is empty");
        if (yaml.Documents.Count > 1) throw new CopaInputException(path, null, "config file holds several YAML documents; give one");
        if (yaml.Documents[0].RootNode is not YamlMappingNode root)
            throw new CopaInputException(path, null, "config must be a mapping of settings (method: copa, adapters: [...], ...)");
        // mergekit's own keys: a config written for mergekit, given here, deserves more than "unknown setting".
        foreach (var (k, _) in root.Children)
            if ((k as YamlScalarNode)?.Value is "models" or "merge_method" or "slices" or "base_model" or "parameters" && !root.Children.ContainsKey(new YamlScalarNode("adapters")))
                throw new CopaInputException(path, null, $"line {k.Start.Line}: this looks like a mergekit config ('{((YamlScalarNode)k).Value}'); copa's config names its inputs "
                    + "'adapters:' (PEFT LoRA folders) and its method 'method:' (e.g. ties, dare_ties, task_arithmetic): see the README's config file section");
        foreach (var (k, v) in root.Children)
        {
            var key = (k as YamlScalarNode)?.Value?.Replace('_', '-') ?? "";
            if (!Keys.Contains(key))
                throw new CopaInputException(path, null, $"line {k.Start.Line}: unknown setting '{(k as YamlScalarNode)?.Value}' (expected one of {string.Join(", ", Keys)})");
            if (config._values.ContainsKey(key)) throw new CopaInputException(path, null, $"line {k.Start.Line}: setting '{key}' given twice");
            config._values[key] = (v, (v as YamlScalarNode)?.Value ?? "");
        }
        config.ReadAdapters();
        return config;
    }

    private void ReadAdapters()
    {
        if (_values.TryGetValue("adapters", out var a))
        {
            if (a.Node is not YamlSequenceNode seq) throw Bad("adapters", a.Node, "must be a list of adapter folders, or of {path, weight} maps");
            Adapters = new List<string>();
            var weights = new List<double>();
            foreach (var item in seq)
            {
                switch (item)
                {
                    case YamlScalarNode s when !string.IsNullOrEmpty(s.Value):
                        Adapters.Add(Resolve(s.Value));
                        weights.Add(double.NaN);
                        break;
                    case YamlMappingNode m:
                        string? p = null;
                        double w = double.NaN;
                        foreach (var (k, v) in m.Children)
                        {
                            var key = (k as YamlScalarNode)?.Value;
                            var text = (v as YamlScalarNode)?.Value;
                            if (key == "path" && !string.IsNullOrEmpty(text)) p = text;
                            else if (key == "weight") w = Number("adapters.weight", v);
                            else throw Bad("adapters", k, $"unknown adapter key '{key}' (expected path, weight)");
                        }
                        if (p == null) throw Bad("adapters", m, "an adapter entry needs a path");
                        Adapters.Add(Resolve(p));
                        weights.Add(w);
                        break;
                    default:
                        throw Bad("adapters", item, "each entry must be a folder path or a {path, weight} map");
                }
            }
            if (weights.Any(double.IsFinite))
            {
                if (weights.Any(double.IsNaN)) throw Bad("adapters", a.Node, "give a weight for every adapter or for none");
                Weights = weights;
            }
        }
        if (_values.TryGetValue("weights", out var ws))
        {
            if (Weights != null) throw Bad("weights", ws.Node, "weights are already given in the adapters list");
            if (ws.Node is not YamlSequenceNode seq) throw Bad("weights", ws.Node, "must be a list of numbers");
            Weights = seq.Select(n => Number("weights", n)).ToList();
        }
    }

    /// <summary>A scalar setting as text, or null when absent.</summary>
    public string? Text(string key)
    {
        if (!_values.TryGetValue(key, out var v)) return null;
        if (v.Node is not YamlScalarNode s) throw Bad(key, v.Node, "must be a single value");
        return s.Value;
    }

    /// <summary>A path setting, resolved against the config's folder.</summary>
    public string? PathValue(string key) => Text(key) is { Length: > 0 } p ? Resolve(p) : null;

    /// <summary>A number setting.</summary>
    public double? Double(string key) => _values.TryGetValue(key, out var v) ? Number(key, v.Node) : null;

    /// <summary>A whole-number setting.</summary>
    public long? Long(string key)
    {
        if (!_values.TryGetValue(key, out var v)) return null;
        if (v.Node is YamlScalarNode { Value: { } s } && long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var x)) return x;
        throw Bad(key, v.Node, "must be a whole number");
    }

    /// <summary>A yes/no setting.</summary>
    public bool? Bool(string key)
    {
        if (!_values.TryGetValue(key, out var v)) return null;
        return (v.Node as YamlScalarNode)?.Value?.ToLowerInvariant() switch
        {
            "true" or "yes" or "on" => true,
            "false" or "no" or "off" => false,
            _ => throw Bad(key, v.Node, "must be true or false"),
        };
    }

    private double Number(string key, YamlNode node)
    {
        if (node is YamlScalarNode { Value: { } s } && MergeSettings.TryParseNumber(s, out var x)) return x;
        throw new CopaInputException(FilePath, null, $"line {node.Start.Line}: " +
            (node is YamlScalarNode { Value: { } t } ? MergeSettings.NotANumber(key, t) : $"{key} must be a number"));
    }

    /// <summary>
    /// The line of a setting, for messages about its value (weights given in the adapters list: that
    /// list's line), or null when the file does not hold it.
    /// </summary>
    public long? LineOf(string key)
    {
        if (key == "weight") key = _values.ContainsKey("weights") ? "weights" : "adapters";
        return _values.TryGetValue(key.Replace('_', '-'), out var v) ? v.Node.Start.Line : null;
    }

    private string Resolve(string p) =>
        Path.IsPathRooted(p) ? p : Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(FilePath))!, p));

    private CopaInputException Bad(string key, YamlNode node, string why) =>
        new(FilePath, null, $"line {node.Start.Line}: {key} {why}");

    /// <summary>The device setting (<c>auto</c>, <c>cpu</c>, <c>cuda:0</c>, ...), or null.</summary>
    public string? Device => Text("device");

    /// <summary>DARE's seed setting (0 or more), or null.</summary>
    public ulong? Seed => Long("seed") is { } s ? s >= 0 ? (ulong)s : throw InFile("seed", "seed must be 0 or more") : null;

    /// <summary>The threads setting (0 = every core), or null.</summary>
    public int? Threads => Long("threads") is { } t ? t is >= 0 and <= int.MaxValue ? (int)t : throw InFile("threads", "threads must be 0 or more") : null;

    /// <summary>
    /// The merge the file describes. Settings it lacks take the request's defaults; a method, adapters and an
    /// output are required. A bad value is an error naming this file and the setting's line.
    /// </summary>
    public MergeRequest ToRequest()
    {
        var method = Text("method") ?? throw new CopaInputException(FilePath, null, "no method given (method: copa, ties, ...)");
        var output = PathValue("out") ?? throw new CopaInputException(FilePath, null, "no output folder given (out: FOLDER)");
        T At<T>(string key, Func<T> read)
        {
            try { return read(); }
            catch (CopaInputException e) when (e.FilePath == null) { throw InFile(key, e.Reason); }
        }
        var request = new MergeRequest
        {
            Options = new MergeOptions
            {
                Method = method,
                Density = Double("density"),
                Lambda = Double("lambda"),
                Clamp = Double("clamp"),
                Normalize = Bool("normalize"),
                PcbRatio = Double("pcb-ratio"),
                Seed = Seed,
                Space = At("space", () => MergeSettings.ParseSpace(Text("space"))),
                Weights = Weights,
            },
            Adapters = Adapters ?? [],
            Output = output,
            Mode = At("output", () => MergeSettings.ParseMode(Text("output"))),
            Base = PathValue("base"),
            Rank = At("rank", () => MergeSettings.ParseRank(Text("rank"))),
            OutDType = At("out-dtype", () => Text("out-dtype") is { } d ? MergeSettings.ParseOutDType(d) : (DType?)null),
            ShardSize = At("shard-size", () => Text("shard-size") is { } ss ? MemorySize.Parse(ss, "shard-size") : (long?)null),
            MaxMemory = At("max-memory", () => Text("max-memory") is { } mm ? MemorySize.Parse(mm, "max-memory") : MergeRequest.DefaultMaxMemory),
            Sync = !(Bool("no-sync") ?? false),
            HtmlReport = !(Bool("no-html-report") ?? false),
            ReportSpectra = At("report-spectra", () => MergeSettings.ParseSpectra(Text("report-spectra"))),
        };
        return request;
    }

    /// <summary>An error in a setting's value, naming this file and the setting's line.</summary>
    public CopaInputException InFile(string key, string reason) => new(FilePath, null, $"line {LineOf(key)}: {reason}");
}
