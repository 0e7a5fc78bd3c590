using System.Text.RegularExpressions;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Formats.Peft;

/// <summary>One LoRA module of an adapter: the A (r × d_in) and B (d_out × r) factors and their scale.</summary>
/// <param name="Path">Module path in the base model, e.g. <c>model.layers.3.self_attn.q_proj</c>.</param>
/// <param name="BaseTensor">The base weight it updates: <c>Path + ".weight"</c>.</param>
/// <param name="A">The lora_A tensor entry.</param>
/// <param name="B">The lora_B tensor entry.</param>
/// <param name="Rank">r (rows of A, columns of B).</param>
/// <param name="Alpha">lora_alpha for this module (alpha_pattern applied).</param>
/// <param name="Scale">α/r, or α/√r with rsLoRA.</param>
/// <param name="Embedding">
/// An embedding's LoRA (<c>lora_embedding_A</c> r × num_embeddings, <c>lora_embedding_B</c> embedding_dim × r):
/// its update of the weight (num_embeddings × embedding_dim) is (B·A)ᵀ·scale (huggingface/peft,
/// src/peft/tuners/lora/layer.py <c>Embedding.get_delta_weight</c>), so it merges as a linear module
/// with d_in = num_embeddings and d_out = embedding_dim whose base weight is stored transposed.
/// </param>
public sealed record LoraModule(string Path, string BaseTensor, TensorInfo A, TensorInfo B, int Rank, double Alpha, double Scale, bool Embedding = false)
{
    /// <summary>Columns of A: the input dimension.</summary>
    public long DIn => A.Shape[1];

    /// <summary>Rows of B: the output dimension.</summary>
    public long DOut => B.Shape[0];
}

/// <summary>What a full tensor beside an adapter's factors is, which decides how it merges.</summary>
public enum FullTensorKind
{
    /// <summary>A trained copy of a <c>modules_to_save</c> module's tensor (e.g. <c>lm_head.weight</c>): merged as the weighted mean.</summary>
    ModulesToSave,
    /// <summary>
    /// LLaVA's <c>non_lora_trainables</c> beside the adapter (e.g. the <c>mm_projector</c>): merged as the weighted
    /// mean, as the released CoPA code averages the projector over tasks.
    /// </summary>
    Trainable,
    /// <summary>
    /// The base weight of a LoRA module saved beside its factors (<c>PATH.base_layer.weight</c>: PEFT's
    /// <c>save_embedding_layers</c>): loading the adapter puts it in place of the base's, so it must be the same
    /// in every adapter, and is carried through unchanged.
    /// </summary>
    BaseLayer,
}

/// <summary>A full tensor beside an adapter's factors.</summary>
/// <param name="Key">Its key as stored (and as written to an adapter output).</param>
/// <param name="BaseTensor">The base model's tensor it stands for (the key without <c>base_model.model.</c>; for a base layer, <c>PATH.weight</c>).</param>
/// <param name="Kind">What it is.</param>
/// <param name="File">The file that holds it.</param>
/// <param name="Info">The tensor in that file.</param>
public sealed record FullTensor(string Key, string BaseTensor, FullTensorKind Kind, ITensorFile File, TensorInfo Info);

/// <summary>
/// A PEFT LoRA adapter folder (<c>adapter_config.json</c> + <c>adapter_model.safetensors</c> or <c>.bin</c>), read
/// and checked: every tensor is a lora_A/lora_B factor of a 2-D module the config targets (see
/// <see cref="AdapterTargeting"/>), paired, with ranks that agree with the config. Anything that
/// would not merge exactly is rejected with a named error.
/// </summary>
public sealed partial class LoraAdapter : IDisposable
{
    /// <summary>The weights file name PEFT uses.</summary>
    public const string WeightsFileName = "adapter_model.safetensors";

    /// <summary>The weights file name PEFT uses with <c>safe_serialization=False</c> (a torch.save checkpoint).</summary>
    public const string PickleWeightsFileName = "adapter_model.bin";

    /// <summary>The prefix PEFT puts before module paths.</summary>
    public const string KeyPrefix = "base_model.model.";

    /// <summary>LLaVA's file of non-LoRA trained tensors beside the adapter (the projector), without its extension.</summary>
    public const string TrainablesName = "non_lora_trainables";

    private LoraAdapter(string folder, AdapterConfig config, ITensorFile weights, List<LoraModule> modules, string? adapterName,
        List<FullTensor> full, ITensorFile? trainables)
    {
        Folder = folder;
        Config = config;
        Weights = weights;
        Modules = modules;
        _byPath = modules.ToDictionary(m => m.Path, StringComparer.Ordinal);
        AdapterName = adapterName;
        FullTensors = full;
        Trainables = trainables;
    }

    /// <summary>The full tensors beside the factors: modules_to_save copies, base-layer copies, LLaVA's trainables.</summary>
    public IReadOnlyList<FullTensor> FullTensors { get; }

    /// <summary>The opened <c>non_lora_trainables</c> file, if the folder has one.</summary>
    public ITensorFile? Trainables { get; }

    private readonly Dictionary<string, LoraModule> _byPath;

    /// <summary>The module at <paramref name="path"/>, if this adapter targets it.</summary>
    public bool TryGetModule(string path, [System.Diagnostics.CodeAnalysis.MaybeNullWhen(false)] out LoraModule module) =>
        _byPath.TryGetValue(path, out module);

    /// <summary>The adapter folder.</summary>
    public string Folder { get; }

    /// <summary>The parsed config.</summary>
    public AdapterConfig Config { get; }

    /// <summary>The opened weights file.</summary>
    public ITensorFile Weights { get; }

    /// <summary>Modules sorted by path (ordinal).</summary>
    public IReadOnlyList<LoraModule> Modules { get; }

    /// <summary>The adapter name embedded in keys (<c>lora_A.NAME.weight</c>), or null.</summary>
    public string? AdapterName { get; }

    /// <summary>PEFT key of a module's A factor (an embedding's LoRA parameters have no <c>.weight</c>: they are a ParameterDict).</summary>
    public static string KeyA(string modulePath, bool embedding = false) =>
        embedding ? $"{KeyPrefix}{modulePath}.lora_embedding_A" : $"{KeyPrefix}{modulePath}.lora_A.weight";

    /// <summary>PEFT key of a module's B factor.</summary>
    public static string KeyB(string modulePath, bool embedding = false) =>
        embedding ? $"{KeyPrefix}{modulePath}.lora_embedding_B" : $"{KeyPrefix}{modulePath}.lora_B.weight";

    [GeneratedRegex(@"^(?<path>.+)\.lora_(?<ab>A|B)(?:\.(?<name>[^.]+))?\.weight$", RegexOptions.CultureInvariant)]
    private static partial Regex FactorKey();

    /// <summary><c>PATH.lora_embedding_A</c>, or with the adapter's name after it as PEFT keeps it in memory.</summary>
    [GeneratedRegex(@"^(?<path>.+)\.lora_embedding_(?<ab>A|B)(?:\.(?<name>[^.]+))?$", RegexOptions.CultureInvariant)]
    private static partial Regex EmbeddingKey();

    /// <summary>
    /// The folder that holds the adapter given as <paramref name="folder"/>: itself when it has an
    /// <c>adapter_config.json</c>, else its one subfolder that has one. PEFT's <c>save_pretrained</c>
    /// writes an adapter not named "default" to <c>DIR/&lt;name&gt;/</c> (huggingface/peft,
    /// src/peft/peft_model.py <c>save_pretrained</c>: <c>os.path.join(save_directory, adapter_name)</c>
    /// unless the name is "default"), so <c>DIR</c> stands for it when it is the only one there; with
    /// several, which one is meant is the user's choice, and the error lists them.
    /// </summary>
    public static string ResolveFolder(string folder)
    {
        if (!Directory.Exists(folder))
            throw new AdapterException(folder, null, File.Exists(folder) ? "not a folder (an adapter is a folder with adapter_config.json)" : "adapter folder not found");
        if (File.Exists(System.IO.Path.Combine(folder, AdapterConfig.FileName))) return folder;
        var named = NamedAdapterFolders(folder);
        return named.Length switch
        {
            1 => named[0],
            0 => throw new AdapterException(folder, null, $"no {AdapterConfig.FileName} in the adapter folder"),
            _ => throw new AdapterException(folder, null, $"no {AdapterConfig.FileName} here, but {named.Length} named adapters in subfolders ("
                + string.Join(", ", named.Select(System.IO.Path.GetFileName)) + "); give the one to merge"),
        };
    }

    /// <summary>Whether <paramref name="folder"/> holds an adapter, itself or as PEFT's named subfolders (see <see cref="ResolveFolder"/>).</summary>
    public static bool IsAdapterFolder(string folder) =>
        Directory.Exists(folder) && (File.Exists(System.IO.Path.Combine(folder, AdapterConfig.FileName)) || NamedAdapterFolders(folder).Length > 0);

    /// <summary>The subfolders of <paramref name="folder"/> that hold an adapter config, in ordinal order.</summary>
    private static string[] NamedAdapterFolders(string folder)
    {
        try
        {
            return Directory.EnumerateDirectories(folder)
                .Where(d => File.Exists(System.IO.Path.Combine(d, AdapterConfig.FileName)))
                .Order(StringComparer.Ordinal).ToArray();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new AdapterException(folder, null, e.Message.TrimEnd('.'), e);
        }
    }

    /// <summary>Opens an adapter folder (or the folder PEFT saved a named adapter under: see <see cref="ResolveFolder"/>).</summary>
    public static LoraAdapter Open(string folder)
    {
        folder = ResolveFolder(folder);
        var configPath = System.IO.Path.Combine(folder, AdapterConfig.FileName);
        var config = AdapterConfig.Load(configPath);
        if (config.UseDora) throw new AdapterException(configPath, null, "use_dora is true: DoRA adapters are not supported (their magnitude vector does not merge as B·A)");
        if (config.LoraBias) throw new AdapterException(configPath, null, "lora_bias is true: LoRA bias terms are not supported");
        // safetensors first, as PEFT's load_peft_weights prefers it when both are there.
        var weightsPath = System.IO.Path.Combine(folder, WeightsFileName);
        if (!File.Exists(weightsPath))
        {
            weightsPath = System.IO.Path.Combine(folder, PickleWeightsFileName);
            if (!File.Exists(weightsPath))
                throw new AdapterException(folder, null, $"no {WeightsFileName} (or {PickleWeightsFileName}) in the adapter folder");
        }
        var weights = TensorFiles.Open(weightsPath);
        ITensorFile? trainables = null;
        try
        {
            var full = new List<FullTensor>();
            var (modules, name) = Pair(weights, config, weightsPath, configPath, full);
            trainables = OpenTrainables(folder);
            if (trainables != null)
                foreach (var t in trainables.Tensors)
                {
                    RequireFloat(trainables.Path, t);
                    full.Add(new FullTensor(t.Name, t.Name.StartsWith(KeyPrefix, StringComparison.Ordinal) ? t.Name[KeyPrefix.Length..] : t.Name,
                        FullTensorKind.Trainable, trainables, t));
                }
            return new LoraAdapter(folder, config, weights, modules, name, full, trainables);
        }
        catch
        {
            weights.Dispose();
            trainables?.Dispose();
            throw;
        }
    }

    /// <summary>LLaVA's <c>non_lora_trainables</c> beside the adapter, if there is one (two formats of it are ambiguous).</summary>
    private static ITensorFile? OpenTrainables(string folder)
    {
        var st = System.IO.Path.Combine(folder, TrainablesName + ".safetensors");
        var bin = System.IO.Path.Combine(folder, TrainablesName + ".bin");
        if (File.Exists(st) && File.Exists(bin))
            throw new AdapterException(folder, null, $"has both {TrainablesName}.safetensors and {TrainablesName}.bin; keep one");
        if (File.Exists(st)) return SafetensorsFile.Open(st);
        if (File.Exists(bin)) return TensorFiles.Open(bin);
        return null;
    }

    private static void RequireFloat(string file, TensorInfo t)
    {
        if (!t.DType.IsMergeFloat())
            throw new AdapterException(file, t.Name, $"dtype {t.DType} is not F32, F16 or BF16");
    }

    private static (List<LoraModule>, string?) Pair(ITensorFile weights, AdapterConfig config, string weightsPath, string configPath, List<FullTensor> full)
    {
        var baseLayers = new List<(string Path, TensorInfo Tensor)>();
        var a = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        var b = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        var embedding = new HashSet<string>(StringComparer.Ordinal);
        string? adapterName = null;
        foreach (var t in weights.Tensors)
        {
            var m = FactorKey().Match(t.Name);
            bool isEmbedding = false;
            if (!m.Success)
            {
                m = EmbeddingKey().Match(t.Name);
                // "weight" after it is no adapter name: PEFT never writes lora_embedding_A.weight.
                if (!m.Success || m.Groups["name"].Value == "weight")
                {
                    var rest = t.Name.StartsWith(KeyPrefix, StringComparison.Ordinal) ? t.Name[KeyPrefix.Length..] : t.Name;
                    if (rest.EndsWith(BaseLayerSuffix, StringComparison.Ordinal) && !t.Name.Contains(".lora_"))
                    {
                        RequireFloat(weightsPath, t);
                        baseLayers.Add((rest[..^BaseLayerSuffix.Length], t));
                        continue;
                    }
                    if (config.Targeting.ModuleToSave(rest) != null && !t.Name.Contains(".lora_"))
                    {
                        RequireFloat(weightsPath, t);
                        full.Add(new FullTensor(t.Name, rest, FullTensorKind.ModulesToSave, weights, t));
                        continue;
                    }
                    throw new AdapterException(weightsPath, t.Name, Unsupported(t.Name, config));
                }
                isEmbedding = true;
            }
            var path = m.Groups["path"].Value;
            if (path.StartsWith(KeyPrefix, StringComparison.Ordinal)) path = path[KeyPrefix.Length..];
            // PEFT creates LoRA layers from the config, then loads the weights: a tensor of a module the
            // config does not target is dropped, so merging it would change what the adapter does.
            if (config.Targeting.WhyNotTargeted(path, isEmbedding) is { } why)
                throw new AdapterException(weightsPath, t.Name, $"not targeted by {AdapterConfig.FileName} ({why}) — PEFT would not load it");
            if (m.Groups["name"].Success)
            {
                var n = m.Groups["name"].Value;
                if (adapterName != null && adapterName != n)
                    throw new AdapterException(weightsPath, t.Name, $"holds two adapters ('{adapterName}' and '{n}'); save one adapter per folder");
                adapterName = n;
            }
            var dict = m.Groups["ab"].Value == "A" ? a : b;
            if (!dict.TryAdd(path, t))
                throw new AdapterException(weightsPath, t.Name, "factor appears twice for the same module");
            if (isEmbedding) embedding.Add(path);
            else if (embedding.Contains(path))
                throw new AdapterException(weightsPath, t.Name, "the module has both linear and embedding LoRA factors");
        }
        foreach (var p in b.Keys)
            if (!a.ContainsKey(p)) throw new AdapterException(weightsPath, b[p].Name, "lora_B has no matching lora_A");
        var modules = new List<LoraModule>(a.Count);
        // Sorted keys rather than OrderBy over key-value pairs: no generic code over a struct to compile at start.
        var paths = a.Keys.ToArray();
        Array.Sort(paths, StringComparer.Ordinal);
        foreach (var path in paths)
        {
            var ta = a[path];
            if (!b.TryGetValue(path, out var tb)) throw new AdapterException(weightsPath, ta.Name, "lora_A has no matching lora_B");
            bool emb = embedding.Contains(path);
            if (emb != (ta.Name.Contains(".lora_embedding_A") && tb.Name.Contains(".lora_embedding_B")))
                throw new AdapterException(weightsPath, ta.Name, "the module has both linear and embedding LoRA factors");
            foreach (var t in new[] { ta, tb })
            {
                if (t.Shape.Length != 2)
                    throw new AdapterException(weightsPath, t.Name, $"shape {t.ShapeText} is not 2-D" + (emb ? "" : " (convolution LoRA is not supported)"));
                RequireFloat(weightsPath, t);
            }
            long r = ta.Shape[0];
            if (tb.Shape[1] != r)
                throw new AdapterException(weightsPath, tb.Name, $"shape {tb.ShapeText} does not match lora_A {ta.ShapeText} (rank {r})");
            if (r == 0 || ta.Shape[1] == 0 || tb.Shape[0] == 0)
                throw new AdapterException(weightsPath, ta.Name, $"empty factor (A {ta.ShapeText}, B {tb.ShapeText})");
            int rank = config.RankFor(path);
            if (rank != r)
                throw new AdapterException(weightsPath, ta.Name, $"rank {r} in the weights but {rank} in {AdapterConfig.FileName} (r / rank_pattern"
                    + (config.RIsDefault ? $"; it has no 'r', so PEFT uses its default {AdapterConfig.PeftDefaultR})" : ")"));
            modules.Add(new LoraModule(path, path + ".weight", ta, tb, rank, config.AlphaFor(path), config.ScaleFor(path, rank), emb));
        }
        if (modules.Count == 0) throw new AdapterException(weightsPath, null, "adapter holds no LoRA modules");
        foreach (var (path, t) in baseLayers)
        {
            // PEFT saves the wrapped layer's base weight (an embedding's, by save_embedding_layers) only for a module it put LoRA on.
            var owner = modules.Find(x => x.Path == path)
                ?? throw new AdapterException(weightsPath, t.Name, $"a base_layer weight of {path}, which has no LoRA factors in this adapter");
            // Stored as the base stores it: an embedding's and a fan_in_fan_out layer's weight is d_in × d_out.
            bool transposed = owner.Embedding || config.FanInFanOut;
            long rows = transposed ? owner.DIn : owner.DOut, cols = transposed ? owner.DOut : owner.DIn;
            if (t.Shape.Length != 2 || t.Shape[0] != rows || t.Shape[1] != cols)
                throw new AdapterException(weightsPath, t.Name, $"shape {t.ShapeText} does not fit its module ({owner.DOut} × {owner.DIn} LoRA)");
            full.Add(new FullTensor(t.Name, owner.BaseTensor, FullTensorKind.BaseLayer, weights, t));
        }
        return (modules, adapterName);
    }

    private const string BaseLayerSuffix = ".base_layer.weight";

    private static string Unsupported(string name, AdapterConfig config)
    {
        if (name.Contains(".lora_embedding_A") || name.Contains(".lora_embedding_B"))
            return "not PEFT's key for an embedding's LoRA (PATH.lora_embedding_A, no .weight)";
        if (name.Contains(".lora_magnitude_vector"))
            return "DoRA magnitude vector: DoRA adapters are not supported";
        if (name.Contains(".lora_A.") || name.Contains(".lora_B."))
            return name.EndsWith(".bias", StringComparison.Ordinal) ? "LoRA bias terms are not supported" : "not a lora_A/lora_B weight";
        if (name.EndsWith(".bias", StringComparison.Ordinal) && config.Bias != "none")
            return $"bias tensors (bias=\"{config.Bias}\") are not supported";
        return "not a LoRA factor, nor a tensor of a module in modules_to_save, nor a base_layer copy";
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        Weights.Dispose();
        Trainables?.Dispose();
    }
}
