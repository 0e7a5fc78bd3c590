using System.Text.Json;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Tests.Formats;

public class ShardedModelTests
{
    private static List<TensorSpec> Specs() =>
    [
        new("model.embed_tokens.weight", DType.BF16, [64, 32]),
        new("model.layers.0.self_attn.q_proj.weight", DType.BF16, [32, 32]),
        new("model.layers.0.mlp.up_proj.weight", DType.BF16, [48, 32]),
        new("model.layers.1.self_attn.q_proj.weight", DType.BF16, [32, 32]),
        new("model.norm.weight", DType.F32, [32]),
        new("lm_head.weight", DType.BF16, [64, 32]),
    ];

    private static float[] Data(TensorSpec s) =>
        Enumerable.Range(0, (int)s.ElementCount).Select(i => (float)Math.Sin(i + s.Name.Length)).ToArray();

    private static string WriteSharded(string folder, long maxShard)
    {
        var plan = ShardedWriter.PlanBySize(Specs(), maxShard);
        using var w = new ShardedWriter(folder, plan, new Dictionary<string, string> { ["producer"] = "test" });
        var specs = Specs().ToDictionary(s => s.Name);
        foreach (var t in w.WriteOrder) w.For(t.Name).AppendSingles(t.Name, Data(specs[t.Name]));
        w.Commit();
        return folder;
    }

    [Fact]
    public void ShardedWriteThenRead_RoundTrips_ThroughFolderAndIndex()
    {
        using var dir = new TempDir();
        WriteSharded(dir.Path, maxShard: 5000);
        var files = Directory.GetFiles(dir.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray();
        Assert.Contains(ShardedModel.IndexFileName, files);
        int shards = files.Count(f => f!.EndsWith(".safetensors"));
        Assert.True(shards >= 3, $"expected several shards, got {string.Join(", ", files)}");
        Assert.Contains($"model-00001-of-{shards:D5}.safetensors", files);
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));

        using var doc = JsonDocument.Parse(File.ReadAllBytes(dir.File(ShardedModel.IndexFileName)));
        long total = doc.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64();
        Assert.Equal(Specs().Sum(s => s.ByteLength), total);

        foreach (var path in new[] { dir.Path, dir.File(ShardedModel.IndexFileName) })
        {
            using var m = ShardedModel.Open(path);
            Assert.Equal(shards, m.Shards.Count);
            Assert.Equal(total, m.TotalSize);
            foreach (var s in Specs())
            {
                Assert.True(m.TryGet(s.Name, out var f, out var info));
                Assert.Equal(s.Shape, info.Shape);
                var got = f.ReadSingles(info);
                var want = Data(s).Select(x => s.DType == DType.F32 ? x : BitConverter.UInt32BitsToSingle((uint)FloatConversionTests.ReferenceBf16(x) << 16)).ToArray();
                Assert.Equal(want, got);
                Assert.Equal("test", f.Metadata["producer"]);
            }
        }
    }

    [Fact]
    public void SingleShard_IsModelSafetensors_WithoutIndex()
    {
        using var dir = new TempDir();
        WriteSharded(dir.Path, maxShard: long.MaxValue);
        Assert.Equal(new[] { "model.safetensors" }, Directory.GetFiles(dir.Path).Select(f => Path.GetFileName(f)).ToArray());
        using var m = ShardedModel.Open(dir.Path);
        Assert.Null(m.IndexPath);
        Assert.Equal(Specs().Count, m.Names.Count);
    }

    private static void EditIndex(string folder, Action<Dictionary<string, string>> edit, string? raw = null)
    {
        var path = Path.Combine(folder, ShardedModel.IndexFileName);
        if (raw != null) { File.WriteAllText(path, raw); return; }
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        var map = doc.RootElement.GetProperty("weight_map").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
        edit(map);
        File.WriteAllText(path, JsonSerializer.Serialize(new { metadata = new { total_size = 1 }, weight_map = map }));
    }

    public static TheoryData<string, string?, string> BadIndexes() => new()
    {
        { "path-in-shard-name", "model.norm.weight", "plain file name" },
        { "absolute-shard-name", "model.norm.weight", "plain file name" },
        { "missing-shard", "model.norm.weight", "does not exist" },
        { "wrong-shard", "model.norm.weight", "does not hold it" },
        { "tensor-missing-from-map", "model.norm.weight", "missing from weight_map" },
        { "not-json", null, "not valid JSON" },
        { "no-weight-map", null, "no weight_map" },
        { "array-root", null, "not a JSON object" },
        { "non-string-value", "x", "not a string" },
    };

    [Theory]
    [MemberData(nameof(BadIndexes))]
    public void MalformedIndex_IsRejectedWithNamedTensor(string kind, string? tensor, string reason)
    {
        using var dir = new TempDir();
        WriteSharded(dir.Path, maxShard: 5000);
        var shardOfNorm = "";
        using (var m = ShardedModel.Open(dir.Path))
        {
            m.TryGet("model.norm.weight", out var f, out _);
            shardOfNorm = Path.GetFileName(f.Path);
        }
        var other = Directory.GetFiles(dir.Path, "*.safetensors").Select(Path.GetFileName).First(n => n != shardOfNorm)!;
        switch (kind)
        {
            case "path-in-shard-name": EditIndex(dir.Path, m => m["model.norm.weight"] = "../" + shardOfNorm); break;
            case "absolute-shard-name": EditIndex(dir.Path, m => m["model.norm.weight"] = "/etc/" + shardOfNorm); break;
            case "missing-shard": EditIndex(dir.Path, m => m["model.norm.weight"] = "model-09999-of-09999.safetensors"); break;
            case "wrong-shard": EditIndex(dir.Path, m => m["model.norm.weight"] = other); break;
            case "tensor-missing-from-map": EditIndex(dir.Path, m => m.Remove("model.norm.weight")); break;
            case "not-json": EditIndex(dir.Path, _ => { }, "{\"weight_map\": {"); break;
            case "no-weight-map": EditIndex(dir.Path, _ => { }, "{\"metadata\": {}}"); break;
            case "array-root": EditIndex(dir.Path, _ => { }, "[]"); break;
            case "non-string-value": EditIndex(dir.Path, _ => { }, "{\"weight_map\": {\"x\": 3}}"); break;
        }
        var e = Assert.Throws<SafetensorsException>(() => ShardedModel.Open(dir.Path));
        Assert.Equal(SafetensorsErrorKind.InvalidIndex, e.Kind);
        Assert.Equal(tensor, e.Tensor);
        Assert.Contains(reason, e.Message);
        Assert.EndsWith(ShardedModel.IndexFileName, e.FilePath);
    }

    /// <summary>
    /// Rewrites shard <paramref name="shardPath"/> with its own tensors plus a copy of
    /// <paramref name="name"/> taken from <paramref name="donorPath"/> (same bytes), so two shards hold it.
    /// </summary>
    internal static void CopyTensorInto(string shardPath, string donorPath, string name)
    {
        var tmp = shardPath + ".new";
        using (var shard = SafetensorsFile.Open(shardPath))
        using (var donor = SafetensorsFile.Open(donorPath))
        {
            var extra = donor.Get(name);
            var specs = shard.Tensors.Select(t => new TensorSpec(t.Name, t.DType, t.Shape)).Append(new TensorSpec(name, extra.DType, extra.Shape));
            using var w = new SafetensorsWriter(tmp, specs, shard.Metadata);
            foreach (var t in w.Layout)
            {
                var (file, tensor) = shard.TryGet(t.Name, out var own) ? (shard, own) : (donor, extra);
                var bytes = new byte[tensor.ByteLength];
                file.ReadBytes(tensor, 0, bytes);
                w.Append(t.Name, bytes);
            }
            w.Commit();
        }
        File.Move(tmp, shardPath, overwrite: true);
    }

    /// <summary>A sharded model in <paramref name="dir"/>: the shard holding model.norm.weight, and another.</summary>
    private static (string Holder, string Other) ShardsOfNormWeight(TempDir dir)
    {
        WriteSharded(dir.Path, maxShard: 5000);
        string holder;
        using (var m = ShardedModel.Open(dir.Path))
        {
            m.TryGet("model.norm.weight", out var f, out _);
            holder = Path.GetFileName(f.Path);
        }
        return (holder, Directory.GetFiles(dir.Path, "*.safetensors").Select(Path.GetFileName).First(n => n != holder)!);
    }

    [Fact]
    public void TensorHeldByTwoShards_IsAnInputError_NamingBothShards()
    {
        using var dir = new TempDir();
        var (holder, other) = ShardsOfNormWeight(dir);
        // The index still maps the tensor to its first holder; the second copy is the ambiguity.
        CopyTensorInto(dir.File(other), dir.File(holder), "model.norm.weight");
        var e = Assert.Throws<SafetensorsException>(() => ShardedModel.Open(dir.Path));
        Assert.Equal(SafetensorsErrorKind.InvalidIndex, e.Kind);
        Assert.Equal("model.norm.weight", e.Tensor);
        Assert.EndsWith(ShardedModel.IndexFileName, e.FilePath);
        Assert.Contains($"'{holder}'", e.Reason);
        Assert.Contains($"'{other}'", e.Reason);
        Assert.Contains("two shards", e.Reason);
    }

    [Fact]
    public void IndexPointingAtTheWrongShard_NamesTheShardThatHoldsTheTensor()
    {
        using var dir = new TempDir();
        var (holder, other) = ShardsOfNormWeight(dir);
        EditIndex(dir.Path, m => m["model.norm.weight"] = other);
        var e = Assert.Throws<SafetensorsException>(() => ShardedModel.Open(dir.Path));
        Assert.Equal("model.norm.weight", e.Tensor);
        Assert.Equal($"weight_map puts it in '{other}', which does not hold it (it is in '{holder}')", e.Reason);
    }

    [Fact]
    public void FolderWithSeveralFilesAndNoIndex_IsRejected()
    {
        using var dir = new TempDir();
        WriteSharded(dir.Path, maxShard: 5000);
        File.Delete(dir.File(ShardedModel.IndexFileName));
        var e = Assert.Throws<SafetensorsException>(() => ShardedModel.Open(dir.Path));
        Assert.Contains("no model.safetensors.index.json", e.Message);
    }
}
