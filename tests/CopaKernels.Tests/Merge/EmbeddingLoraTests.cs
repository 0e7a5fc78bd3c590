using System.Text.Json.Nodes;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Merge.Streaming;
using CopaKernels.Tests.Cli;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// Embedding LoRA as PEFT saves it (<c>lora_embedding_A</c> r × num_embeddings, <c>lora_embedding_B</c>
/// embedding_dim × r, no <c>.weight</c>): ΔW of the embedding weight is (B·A)ᵀ·scale, checked against a
/// double-precision reference written here from the factors; the adapter output keeps PEFT's keys.
/// </summary>
public sealed class EmbeddingLoraTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    private static readonly int Vocab = StreamingFixture.Shape.Vocab, Hidden = StreamingFixture.Shape.Hidden;
    private const string Embed = "model.embed_tokens", Q = "model.layers.1.self_attn.q_proj";

    /// <summary>An adapter on the embedding and one projection, F32, rank 4, α 8, with seeded values.</summary>
    private static string WriteAdapter(string folder, int seed)
    {
        Directory.CreateDirectory(folder);
        var config = AdapterWriter.MakeConfig(4, 8, ["embed_tokens", "q_proj"], null);
        var modules = new[] { new AdapterModuleSpec(Embed, Hidden, Vocab, 4, Embedding: true), new AdapterModuleSpec(Q, Hidden, Hidden, 4) };
        var rng = new Random(seed);
        using var w = new AdapterWriter(folder, config, modules, DType.F32);
        foreach (var t in w.Weights.Layout)
            w.Weights.AppendSingles(t.Name, Enumerable.Range(0, (int)t.ElementCount).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray());
        w.Commit();
        return folder;
    }

    private static float[] Read(string file, string tensor)
    {
        using var f = SafetensorsFile.Open(file);
        return f.ReadSingles(f.Get(tensor));
    }

    [Fact]
    public void Adapter_ReadsPeftsEmbeddingKeys_AsATransposedModule()
    {
        using var dir = new TempDir();
        using var a = LoraAdapter.Open(WriteAdapter(Path.Combine(dir.Path, "a"), 1));
        Assert.True(a.TryGetModule(Embed, out var m));
        Assert.True(m.Embedding);
        Assert.Equal((Hidden, Vocab), (m.DOut, m.DIn));
        Assert.Equal("base_model.model.model.embed_tokens.lora_embedding_A", m.A.Name);
        Assert.Equal(Embed + ".weight", m.BaseTensor);
        Assert.True(a.TryGetModule(Q, out var q));
        Assert.False(q.Embedding);
    }

    [Fact]
    public void ModelOutput_AddsTheTransposedProduct_ToTheEmbedding()
    {
        using var dir = new TempDir();
        var adapters = new[] { WriteAdapter(Path.Combine(dir.Path, "a0"), 11), WriteAdapter(Path.Combine(dir.Path, "a1"), 12) };
        var output = Path.Combine(dir.Path, "out");
        var (code, _, err) = CliRunner.Run("merge", "--method", "task-arithmetic", "--space", "delta", "--weight", "1", "--weight", "-0.5",
            "--adapter", adapters[0], "--adapter", adapters[1], "--base", fx.Base, "--output", "model", "--out-dtype", "f32", "--out", output, "--quiet");
        Assert.True(code == 0, err);

        // W' = W + Σ_n w_n·(α/r)·(B_n·A_n)ᵀ, in double from the stored factors and the base.
        var want = new double[Vocab * Hidden];
        using (var b = ShardedModel.Open(fx.Base))
        {
            Assert.True(b.TryGet(Embed + ".weight", out var file, out var info));
            var w = file.ReadSingles(info);
            for (int i = 0; i < want.Length; i++) want[i] = w[i];
        }
        double[] weights = [1, -0.5];
        for (int n = 0; n < 2; n++)
        {
            var file = Path.Combine(adapters[n], LoraAdapter.WeightsFileName);
            var a = Read(file, LoraAdapter.KeyA(Embed, embedding: true)); // 4 × vocab
            var bf = Read(file, LoraAdapter.KeyB(Embed, embedding: true)); // hidden × 4
            for (int v = 0; v < Vocab; v++)
                for (int h = 0; h < Hidden; h++)
                {
                    double s = 0;
                    for (int k = 0; k < 4; k++) s += (double)bf[h * 4 + k] * a[k * Vocab + v];
                    want[v * Hidden + h] += weights[n] * 2.0 * s;
                }
        }
        using var merged = ShardedModel.Open(output);
        Assert.True(merged.TryGet(Embed + ".weight", out var mf, out var mi));
        Assert.Equal([Vocab, Hidden], mi.Shape);
        var got = mf.ReadSingles(mi);
        for (int i = 0; i < want.Length; i++)
            Assert.True(Math.Abs(got[i] - want[i]) <= 1e-5 * (1 + Math.Abs(want[i])), $"element {i}: {got[i]} vs {want[i]}");
    }

    [Theory]
    [InlineData("copa")]
    [InlineData("ties")]
    public void AdapterOutput_KeepsPeftsEmbeddingKeys_AndEqualsTheModelOutputsDelta(string method)
    {
        using var dir = new TempDir();
        var adapters = new[] { WriteAdapter(Path.Combine(dir.Path, "a0"), 21), WriteAdapter(Path.Combine(dir.Path, "a1"), 22) };
        string[] common = ["merge", "--method", method, "--adapter", adapters[0], "--adapter", adapters[1], "--out-dtype", "f32", "--quiet"];
        var adapterOut = Path.Combine(dir.Path, "adapter");
        var (code, _, err) = CliRunner.Run([.. common, "--out", adapterOut]);
        Assert.True(code == 0, err);
        var deltaOut = Path.Combine(dir.Path, "delta");
        (code, _, err) = CliRunner.Run([.. common, "--out", deltaOut, "--output", "delta"]);
        Assert.True(code == 0, err);

        using var merged = LoraAdapter.Open(adapterOut);
        Assert.True(merged.TryGetModule(Embed, out var m));
        Assert.True(m.Embedding);
        Assert.Equal((Hidden, Vocab), (m.DOut, m.DIn));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapterOut, AdapterConfig.FileName)))!;
        Assert.Contains("embed_tokens", config["target_modules"]!.AsArray().Select(x => (string)x!));

        // The written pair, as PEFT applies it, is the delta output's embedding ΔW (vocab × hidden).
        var file = Path.Combine(adapterOut, LoraAdapter.WeightsFileName);
        var a = Read(file, m.A.Name);
        var b = Read(file, m.B.Name);
        using var delta = ShardedModel.Open(deltaOut);
        Assert.True(delta.TryGet(Embed + ".weight", out var df, out var di));
        Assert.Equal([Vocab, Hidden], di.Shape);
        var d = df.ReadSingles(di);
        for (int v = 0; v < Vocab; v++)
            for (int h = 0; h < Hidden; h++)
            {
                double s = 0;
                for (int k = 0; k < m.Rank; k++) s += (double)b[h * m.Rank + k] * a[k * Vocab + v];
                s *= m.Scale;
                Assert.True(Math.Abs(d[v * Hidden + h] - s) <= 1e-5 * (1 + Math.Abs(s)), $"({v}, {h}): {d[v * Hidden + h]} vs {s}");
            }
    }
}
