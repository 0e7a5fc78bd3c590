using System.Text.Json;
using K = CopaKernels.Formats.Safetensors.SafetensorsErrorKind;

namespace CopaKernels.Formats.Safetensors;

/// <summary>
/// A model stored as one safetensors file or as shards with a <c>model.safetensors.index.json</c>.
/// Opening reads every shard header and cross-checks them against the index's weight_map: each
/// tensor in the map is in the shard the map names, each shard tensor is in the map, and no tensor
/// is in two shards.
/// </summary>
public sealed class ShardedModel : IDisposable
{
    /// <summary>The index file name Hugging Face uses.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, (SafetensorsFile File, TensorInfo Info)> _tensors;

    private ShardedModel(string path, string? indexPath, List<SafetensorsFile> shards,
        Dictionary<string, (SafetensorsFile, TensorInfo)> tensors, IReadOnlyDictionary<string, string> indexMetadata)
    {
        Path = path;
        IndexPath = indexPath;
        Shards = shards;
        _tensors = tensors;
        IndexMetadata = indexMetadata;
        Names = shards.SelectMany(s => s.Tensors.Select(t => t.Name)).ToList();
    }

    /// <summary>The folder, index or file the model was opened from.</summary>
    public string Path { get; }

    /// <summary>The index file, or null for a single-file model.</summary>
    public string? IndexPath { get; }

    /// <summary>The shard files in index order (one for a single-file model).</summary>
    public IReadOnlyList<SafetensorsFile> Shards { get; }

    /// <summary>Every tensor name, shard by shard in data order.</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>The index's metadata (values as JSON text), empty for a single file.</summary>
    public IReadOnlyDictionary<string, string> IndexMetadata { get; }

    /// <summary>Sum of all tensor data sizes.</summary>
    public long TotalSize => Shards.Sum(s => s.Header.DataLength);

    /// <summary>Finds the shard and entry of a tensor.</summary>
    public bool TryGet(string name, out SafetensorsFile file, out TensorInfo info)
    {
        if (_tensors.TryGetValue(name, out var e)) { file = e.File; info = e.Info; return true; }
        file = null!; info = null!;
        return false;
    }

    /// <summary>
    /// Opens a model: a <c>.safetensors</c> file, an <c>*.index.json</c>, or a folder holding either
    /// an index or exactly one <c>.safetensors</c> file.
    /// </summary>
    public static ShardedModel Open(string path)
    {
        if (Directory.Exists(path))
        {
            var index = System.IO.Path.Combine(path, IndexFileName);
            if (File.Exists(index)) return OpenIndex(index, path);
            var files = Directory.GetFiles(path, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
            if (files.Length == 1) return OpenSingle(files[0], path);
            var alt = Directory.GetFiles(path, "*.safetensors.index.json");
            if (alt.Length == 1) return OpenIndex(alt[0], path);
            throw new SafetensorsException(K.InvalidIndex, path, null, files.Length == 0
                ? "folder has no .safetensors file"
                : $"folder has {files.Length} .safetensors files and no {IndexFileName}");
        }
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) return OpenIndex(path, path);
        return OpenSingle(path, path);
    }

    private static ShardedModel OpenSingle(string file, string path)
    {
        var f = SafetensorsFile.Open(file);
        var map = f.Tensors.ToDictionary(t => t.Name, t => (f, t), StringComparer.Ordinal);
        return new ShardedModel(path, null, [f], map, new Dictionary<string, string>());
    }

    private static ShardedModel OpenIndex(string indexPath, string path)
    {
        var (weightMap, metadata) = ReadIndex(indexPath);
        var folder = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
        // In file-name order (model-00001-of-00003 first), not in the order the weight map first names them:
        // Hugging Face sorts the map by tensor name, which would list the shards in any order.
        var shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        var shards = new List<SafetensorsFile>();
        try
        {
            var byShard = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (var s in shardNames)
            {
                var sp = System.IO.Path.Combine(folder, s);
                if (!File.Exists(sp))
                    throw new SafetensorsException(K.InvalidIndex, indexPath, weightMap.First(kv => kv.Value == s).Key, $"shard '{s}' does not exist");
                var f = SafetensorsFile.Open(sp);
                shards.Add(f);
                byShard[s] = f;
            }
            // Every tensor must live in exactly one shard. A second copy makes the model ambiguous
            // (which one do loaders read?) and every consumer of Names would see the tensor twice,
            // so it is refused here, when the model is opened, naming both files.
            var holder = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (var f in shards)
                foreach (var t in f.Tensors)
                {
                    if (holder.TryGetValue(t.Name, out var first))
                        throw new SafetensorsException(K.InvalidIndex, indexPath, t.Name,
                            $"held by two shards, '{System.IO.Path.GetFileName(first.Path)}' and '{System.IO.Path.GetFileName(f.Path)}'"
                            + (weightMap.TryGetValue(t.Name, out var listed) ? $" (weight_map names '{listed}')" : ""));
                    holder[t.Name] = f;
                }
            var map = new Dictionary<string, (SafetensorsFile, TensorInfo)>(StringComparer.Ordinal);
            foreach (var (name, shard) in weightMap)
            {
                var f = byShard[shard];
                if (!f.TryGet(name, out var info))
                    throw new SafetensorsException(K.InvalidIndex, indexPath, name, $"weight_map puts it in '{shard}', which does not hold it"
                        + (holder.TryGetValue(name, out var actual) ? $" (it is in '{System.IO.Path.GetFileName(actual.Path)}')" : ""));
                map[name] = (f, info);
            }
            foreach (var f in shards)
                foreach (var t in f.Tensors)
                    if (!weightMap.ContainsKey(t.Name))
                        throw new SafetensorsException(K.InvalidIndex, indexPath, t.Name, $"held by '{System.IO.Path.GetFileName(f.Path)}' but missing from weight_map");
            return new ShardedModel(path, indexPath, shards, map, metadata);
        }
        catch
        {
            foreach (var f in shards) f.Dispose();
            throw;
        }
    }

    /// <summary>Reads and checks an index file: a JSON object with a weight_map of tensor → plain shard file name.</summary>
    public static (Dictionary<string, string> WeightMap, Dictionary<string, string> Metadata) ReadIndex(string indexPath)
    {
        JsonDocument doc;
        try
        {
            var bytes = File.ReadAllBytes(indexPath);
            doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e) { throw new SafetensorsException(K.InvalidIndex, indexPath, null, $"not valid JSON ({e.Message.Split('\n')[0].TrimEnd('.')})", e); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SafetensorsException(K.Io, indexPath, null, SafetensorsFile.Describe(e), e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new SafetensorsException(K.InvalidIndex, indexPath, null, "index is not a JSON object");
            if (!root.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw new SafetensorsException(K.InvalidIndex, indexPath, null, "index has no weight_map object");
            var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in wm.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new SafetensorsException(K.InvalidIndex, indexPath, p.Name, "weight_map value is not a string");
                var shard = p.Value.GetString()!;
                if (shard.Length == 0 || shard.Contains('/') || shard.Contains('\\') || shard is "." or ".." || shard.Contains('\0')
                    || System.IO.Path.IsPathRooted(shard))
                    throw new SafetensorsException(K.InvalidIndex, indexPath, p.Name, $"shard name '{shard}' must be a plain file name");
                if (!weightMap.TryAdd(p.Name, shard))
                    throw new SafetensorsException(K.InvalidIndex, indexPath, p.Name, "tensor appears twice in weight_map");
            }
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            if (root.TryGetProperty("metadata", out var md) && md.ValueKind == JsonValueKind.Object)
                foreach (var p in md.EnumerateObject()) metadata[p.Name] = p.Value.GetRawText();
            return (weightMap, metadata);
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var s in Shards) s.Dispose();
    }
}
