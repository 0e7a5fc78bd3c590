using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Merge.Streaming;
using CopaKernels.Tests.Cli;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// Adapters that target different modules: the output covers the union, and each module is merged over
/// the adapters that have it, exactly as a merge of those adapters alone would merge it (with their own
/// weights); modules every adapter has come out as in the merge where all adapters have everything.
/// </summary>
public sealed class TargetSetTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    /// <summary>Rewrites <paramref name="adapter"/> keeping only its attention projections (q, k, v, o).</summary>
    private static void KeepAttentionOnly(string adapter)
    {
        var file = Path.Combine(adapter, LoraAdapter.WeightsFileName);
        var kept = new List<(TensorSpec Spec, byte[] Bytes)>();
        using (var f = SafetensorsFile.Open(file))
            foreach (var t in f.Tensors.Where(t => t.Name.Contains(".self_attn.")))
            {
                var bytes = new byte[t.ByteLength];
                f.ReadBytes(t, 0, bytes);
                kept.Add((new TensorSpec(t.Name, t.DType, t.Shape), bytes));
            }
        var config = AdapterConfig.Load(Path.Combine(adapter, AdapterConfig.FileName));
        File.Delete(file);
        using (var w = new SafetensorsWriter(file, kept.Select(k => k.Spec)))
        {
            foreach (var t in w.Layout) w.Append(t.Name, kept.Single(k => k.Spec.Name == t.Name).Bytes);
            w.Commit();
        }
        var raw = config.Raw.DeepClone().AsObject();
        raw["target_modules"] = new System.Text.Json.Nodes.JsonArray("q_proj", "k_proj", "v_proj", "o_proj");
        File.WriteAllText(Path.Combine(adapter, AdapterConfig.FileName), raw.ToJsonString());
    }

    private static Dictionary<string, byte[]> Tensors(string dir)
    {
        using var m = ShardedModel.Open(dir);
        var d = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (var s in m.Shards)
            foreach (var t in s.Tensors)
            {
                var b = new byte[t.ByteLength];
                s.ReadBytes(t, 0, b);
                d[t.Name] = b;
            }
        return d;
    }

    private static void Merge(string output, IEnumerable<string> adapters, params string[] flags)
    {
        var args = new List<string> { "merge", "--out", output, "--quiet" };
        foreach (var a in adapters) args.AddRange(["--adapter", a]);
        args.AddRange(flags);
        var (code, _, err) = CliRunner.Run(args.ToArray());
        Assert.True(code == 0, err);
    }

    [Theory]
    [InlineData("copa", null)]
    [InlineData("copa-official", null)]
    [InlineData("ties", "delta")]
    [InlineData("task-arithmetic", "factors")]
    [InlineData("pcb", "delta")]
    [InlineData("dare-ties", "delta")]
    public void EachModule_IsMergedOverTheAdaptersThatHaveIt(string method, string? space)
    {
        using var dir = new TempDir();
        var (baseDir, adapters) = fx.CopyInputs(dir);
        KeepAttentionOnly(adapters[1]);
        var reads = CopaKernels.Merge.MergeMethods.Get(method).Parameters;
        string[] Flags(params double[] weights)
        {
            var f = new List<string> { "--method", method, "--output", "delta", "--out-dtype", "f32" };
            if (space != null) f.AddRange(["--space", space]);
            if (reads.Seed) f.AddRange(["--seed", "5"]);
            if (reads.Weights) foreach (var w in weights) f.AddRange(["--weight", w.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
            return f.ToArray();
        }

        var partial = Path.Combine(dir.Path, "partial");
        Merge(partial, adapters, Flags(1, 0.5, -0.25));
        var report = MergeReport.FromJson(File.ReadAllText(Path.Combine(partial, MergeReport.FileName)));
        var got = Tensors(partial);

        // Every adapter's own modules, unchanged: the full merge (adapter 1 with all its modules).
        var full = Path.Combine(dir.Path, "full");
        Merge(full, fx.Adapters, Flags(1, 0.5, -0.25));
        var all = Tensors(full);
        Assert.Equal(all.Keys.Order(StringComparer.Ordinal), got.Keys.Order(StringComparer.Ordinal));
        foreach (var (name, bytes) in got.Where(kv => kv.Key.Contains(".self_attn.")))
            Assert.True(bytes.AsSpan().SequenceEqual(all[name]), $"{name} differs from the merge where every adapter has it");

        // The others: as merged from adapters 0 and 2 alone, with their weights. DARE's drops follow the
        // adapter (its random stream is adapter 2's in both runs only when adapter 2 keeps its index),
        // so a two-adapter merge is the reference only for the methods without random drops.
        var mlp = got.Keys.Where(k => !k.Contains(".self_attn.")).ToList();
        Assert.NotEmpty(mlp);
        // Adapter 2's MLP modules are gone, so those results must differ from the full merge's.
        Assert.All(mlp, name => Assert.False(got[name].AsSpan().SequenceEqual(all[name]), $"{name}: adapter 2's module still counted"));
        foreach (var m in report.Modules)
        {
            bool attention = m.Path.Contains(".self_attn.");
            Assert.Equal(attention ? null : [0, 2], m.Adapters);
            Assert.Equal(attention ? 3 : 2, m.Ranks.Count);
        }
        if (reads.Seed) return;
        var pair = Path.Combine(dir.Path, "pair");
        Merge(pair, [adapters[0], adapters[2]], Flags(1, -0.25));
        var two = Tensors(pair);
        foreach (var name in mlp)
            Assert.True(got[name].AsSpan().SequenceEqual(two[name]), $"{name} differs from the merge of adapters 1 and 3 alone");
    }

    [Fact]
    public void AdapterOutput_OfPartialModules_HasTheirRank_AndAppliesAsTheDeltaOutput()
    {
        using var dir = new TempDir();
        var (_, adapters) = fx.CopyInputs(dir);
        KeepAttentionOnly(adapters[1]);
        var adapterOut = Path.Combine(dir.Path, "adapter");
        Merge(adapterOut, adapters, "--method", "copa", "--out-dtype", "f32");
        var deltaOut = Path.Combine(dir.Path, "delta");
        Merge(deltaOut, adapters, "--method", "copa", "--output", "delta");
        var deltas = Tensors(deltaOut);
        using var merged = LoraAdapter.Open(adapterOut);
        Assert.Equal(deltas.Count, merged.Modules.Count);
        foreach (var m in merged.Modules)
        {
            // Rank Σ r_n over the adapters that have the module: 3 × 4 where all do, 2 × 4 elsewhere.
            Assert.Equal(m.Path.Contains(".self_attn.") ? 12 : 8, m.Rank);
            var a = merged.Weights.ReadSingles(m.A);
            var b = merged.Weights.ReadSingles(m.B);
            var d = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(deltas[m.BaseTensor]);
            for (int i = 0; i < m.DOut; i++)
                for (int j = 0; j < m.DIn; j++)
                {
                    double s = 0;
                    for (int k = 0; k < m.Rank; k++) s += (double)b[i * m.Rank + k] * a[k * m.DIn + j];
                    s *= m.Scale;
                    Assert.True(Math.Abs(d[(int)(i * m.DIn + j)] - s) <= 1e-5 * (1 + Math.Abs(s)), $"{m.Path} ({i}, {j})");
                }
        }
    }

    [Fact]
    public void DareDrops_FollowTheAdapter_NotItsPlaceAmongThoseThatHaveTheModule()
    {
        using var dir = new TempDir();
        var (_, adapters) = fx.CopyInputs(dir);
        KeepAttentionOnly(adapters[1]);
        // Adapter 3 alone keeps its weight and its drops: with adapter 1 weighted 0 (it contributes
        // nothing), an MLP module merged over {1, 3} equals the one where adapter 2 also took part but
        // was weighted 0, bit for bit, only if adapter 3's random stream did not move to task index 1.
        var partial = Path.Combine(dir.Path, "partial");
        Merge(partial, adapters, "--method", "dare", "--space", "delta", "--output", "delta", "--out-dtype", "f32", "--seed", "9",
            "--weight", "0", "--weight", "1", "--weight", "1");
        var full = Path.Combine(dir.Path, "full");
        Merge(full, fx.Adapters, "--method", "dare", "--space", "delta", "--output", "delta", "--out-dtype", "f32", "--seed", "9",
            "--weight", "0", "--weight", "0", "--weight", "1");
        var got = Tensors(partial);
        var want = Tensors(full);
        foreach (var name in got.Keys.Where(k => !k.Contains(".self_attn.")))
            Assert.True(got[name].AsSpan().SequenceEqual(want[name]), name);
    }
}
