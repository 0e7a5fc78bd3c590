using System.Text.Json;

namespace CopaKernels.Formats.Safetensors;

/// <summary>
/// Writes a model as safetensors shards plus <c>model.safetensors.index.json</c> (or one
/// <c>model.safetensors</c> when there is a single shard, as Hugging Face does). Shards are opened
/// one at a time and streamed, in <see cref="WriteOrder"/>.
/// </summary>
public sealed class ShardedWriter : IDisposable
{
    private readonly string _folder;
    private readonly IReadOnlyList<IReadOnlyList<TensorSpec>> _plan;
    private readonly IReadOnlyDictionary<string, string>? _metadata;
    private readonly IReadOnlyDictionary<string, string>? _indexMetadata;
    private readonly IReadOnlyList<string> _names;
    private readonly bool _flushToDisk;
    private readonly List<IReadOnlyList<TensorInfo>> _layouts = new();
    private readonly Dictionary<string, int> _weightMap = new(StringComparer.Ordinal);
    private SafetensorsWriter? _current;
    private int _shard = -1;

    /// <summary>Plans the shards and computes every shard's layout; no file is created until data arrives.</summary>
    /// <param name="folder">Destination folder (existing).</param>
    /// <param name="shards">Tensors of each shard.</param>
    /// <param name="metadata">Extra <c>__metadata__</c> strings for every shard.</param>
    /// <param name="indexMetadata">Extra entries of the index's metadata object (raw JSON values), beside total_size.</param>
    /// <param name="shardNames">
    /// File names of the shards, one per entry of <paramref name="shards"/> (e.g. mirroring a base model's);
    /// by default Hugging Face's <c>model-0000i-of-0000n.safetensors</c> (see <see cref="ShardName"/>).
    /// </param>
    /// <param name="flushToDisk">Passed to each shard's <see cref="SafetensorsWriter"/>.</param>
    public ShardedWriter(string folder, IReadOnlyList<IReadOnlyList<TensorSpec>> shards,
        IReadOnlyDictionary<string, string>? metadata = null, IReadOnlyDictionary<string, string>? indexMetadata = null,
        IReadOnlyList<string>? shardNames = null, bool flushToDisk = true)
    {
        _flushToDisk = flushToDisk;
        _folder = folder;
        if (shardNames != null)
        {
            if (shardNames.Count != shards.Count) throw new ArgumentException($"{shardNames.Count} shard names for {shards.Count} shards");
            if (shardNames.Distinct(StringComparer.Ordinal).Count() != shardNames.Count) throw new ArgumentException("shard names repeat");
            if (shardNames.Any(n => n.Length == 0 || n != Path.GetFileName(n) || n == ShardedModel.IndexFileName))
                throw new ArgumentException("a shard name must be a plain file name");
        }
        var keep = Enumerable.Range(0, shards.Count).Where(i => shards[i].Count > 0).ToList();
        _plan = keep.Select(i => shards[i]).ToList();
        if (_plan.Count == 0) { _plan = [Array.Empty<TensorSpec>()]; keep = [-1]; }
        _names = shardNames != null && keep[0] >= 0
            ? keep.Select(i => shardNames[i]).ToList()
            : Enumerable.Range(0, _plan.Count).Select(i => ShardName(i, _plan.Count)).ToList();
        _metadata = metadata;
        _indexMetadata = indexMetadata;
        for (int i = 0; i < _plan.Count; i++)
        {
            var layout = SafetensorsWriter.PlanLayout(_plan[i]);
            foreach (var t in layout)
                if (!_weightMap.TryAdd(t.Name, i)) throw new ArgumentException($"tensor {t.Name} planned twice");
            _layouts.Add(layout);
        }
        TotalSize = _layouts.Sum(l => l.Count == 0 ? 0 : l[^1].End);
    }

    /// <summary>File name of shard <paramref name="index"/> of <paramref name="count"/>.</summary>
    public static string ShardName(int index, int count) =>
        count == 1 ? "model.safetensors" : $"model-{index + 1:D5}-of-{count:D5}.safetensors";

    /// <summary>
    /// Splits tensors, kept in the given order, into shards of at most <paramref name="maxShardBytes"/>
    /// of data each; a tensor larger than that gets a shard of its own.
    /// </summary>
    public static List<IReadOnlyList<TensorSpec>> PlanBySize(IEnumerable<TensorSpec> tensors, long maxShardBytes)
    {
        var shards = new List<IReadOnlyList<TensorSpec>>();
        var cur = new List<TensorSpec>();
        long size = 0;
        foreach (var t in tensors)
        {
            if (cur.Count > 0 && size + t.ByteLength > maxShardBytes)
            {
                shards.Add(cur);
                cur = new List<TensorSpec>();
                size = 0;
            }
            cur.Add(t);
            size += t.ByteLength;
        }
        if (cur.Count > 0) shards.Add(cur);
        return shards;
    }

    /// <summary>Every tensor in the order its data must be appended.</summary>
    public IEnumerable<TensorInfo> WriteOrder => _layouts.SelectMany(l => l);

    /// <summary>Number of shards.</summary>
    public int ShardCount => _plan.Count;

    /// <summary>Sum of the data sizes of all tensors (the index's total_size).</summary>
    public long TotalSize { get; }

    /// <summary>The writer of the shard that holds <paramref name="name"/>; opens it (and commits the previous one) when needed.</summary>
    public SafetensorsWriter For(string name)
    {
        if (!_weightMap.TryGetValue(name, out var target)) throw new ArgumentException($"tensor {name} was not planned");
        if (target < _shard) throw new InvalidOperationException($"{name}: its shard was already completed");
        while (_shard < target) OpenNext();
        return _current!;
    }

    /// <summary>
    /// Completes the last shard and writes the index: when there is more than one shard, or one shard
    /// under a name other than <c>model.safetensors</c> (which loaders only find through an index).
    /// </summary>
    public void Commit()
    {
        while (_shard < _plan.Count - 1) OpenNext();
        _current?.Commit();
        _current?.Dispose();
        _current = null;
        if (_plan.Count > 1 || _names[0] != ShardName(0, 1)) WriteIndex();
    }

    /// <inheritdoc/>
    public void Dispose() => _current?.Dispose();

    private void OpenNext()
    {
        if (_current != null)
        {
            _current.Commit();
            _current.Dispose();
        }
        _shard++;
        _current = new SafetensorsWriter(Path.Combine(_folder, _names[_shard]), _plan[_shard], _metadata, _flushToDisk);
    }

    private void WriteIndex()
    {
        var path = Path.Combine(_folder, ShardedModel.IndexFileName);
        var temp = path + ".tmp";
        using (var fs = new FileStream(temp, FileMode.Create, FileAccess.Write))
        using (var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteStartObject("metadata");
            w.WriteNumber("total_size", TotalSize);
            if (_indexMetadata != null)
                foreach (var (k, v) in _indexMetadata)
                    if (k != "total_size") { w.WritePropertyName(k); w.WriteRawValue(v); }
            w.WriteEndObject();
            w.WriteStartObject("weight_map");
            foreach (var (k, v) in _weightMap.OrderBy(kv => kv.Key, StringComparer.Ordinal)) w.WriteString(k, _names[v]);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        File.Move(temp, path, overwrite: true);
    }
}
