using System.Text.Json.Nodes;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Merge.Streaming;
using CopaKernels.Tests.Cli;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// Full tensors beside the factors: PEFT's <c>modules_to_save</c> copies and LLaVA's
/// <c>non_lora_trainables</c> merge as the weighted mean Σ w_n T_n / Σ w_n over the adapters that have them;
/// a saved base-layer copy (PEFT's <c>save_embedding_layers</c>) must agree across adapters, is carried
/// through, and is the weight an embedding's ΔW is added to in a model output. Checked against values
/// computed here in double from the files.
/// </summary>
public sealed class FullTensorTests
{
    private const int Vocab = 50, Hidden = 16, QOut = 24, Rank = 4, Proj = 8;
    private const string Q = "model.layers.0.self_attn.q_proj", Embed = "model.embed_tokens";
    private const string LmKey = "base_model.model.lm_head.weight", CopyKey = "base_model.model.model.embed_tokens.base_layer.weight";
    private const string ProjW = "base_model.model.model.mm_projector.0.weight", ProjB = "base_model.model.model.mm_projector.0.bias";

    private static float[] Random(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
    }

    /// <summary>A base of one file: q_proj, the embedding, a BF16 lm_head and a projector.</summary>
    private static string WriteBase(string folder)
    {
        Directory.CreateDirectory(folder);
        var tensors = new (string Name, DType Type, long[] Shape)[]
        {
            (Q + ".weight", DType.F32, [QOut, Hidden]), (Embed + ".weight", DType.F32, [Vocab, Hidden]), ("lm_head.weight", DType.BF16, [Vocab, Hidden]),
            ("model.mm_projector.0.weight", DType.F32, [Hidden, Proj]), ("model.mm_projector.0.bias", DType.F32, [Hidden]),
        };
        using var w = new SafetensorsWriter(Path.Combine(folder, "model.safetensors"), tensors.Select(t => new TensorSpec(t.Name, t.Type, t.Shape)));
        int seed = 100;
        foreach (var t in w.Layout) w.AppendSingles(t.Name, Random((int)t.ElementCount, seed++));
        w.Commit();
        return folder;
    }

    /// <summary>
    /// An adapter with LoRA on q_proj and the embedding, the embedding's base-layer copy <paramref name="copy"/>,
    /// and, if asked, an lm_head in modules_to_save and LLaVA's projector in non_lora_trainables.safetensors.
    /// </summary>
    private static string WriteAdapter(string folder, int seed, float[] copy, bool lmHead = true, bool projector = true)
    {
        Directory.CreateDirectory(folder);
        var config = AdapterWriter.MakeConfig(Rank, 8, ["q_proj", "embed_tokens"], null);
        config["modules_to_save"] = new JsonArray("lm_head");
        File.WriteAllText(Path.Combine(folder, AdapterConfig.FileName), config.ToJsonString());
        var specs = new List<TensorSpec>
        {
            new(LoraAdapter.KeyA(Q), DType.F32, [Rank, Hidden]), new(LoraAdapter.KeyB(Q), DType.F32, [QOut, Rank]),
            new(LoraAdapter.KeyA(Embed, true), DType.F32, [Rank, Vocab]), new(LoraAdapter.KeyB(Embed, true), DType.F32, [Hidden, Rank]),
            new(CopyKey, DType.F32, [Vocab, Hidden]),
        };
        if (lmHead) specs.Add(new(LmKey, DType.F32, [Vocab, Hidden]));
        using (var w = new SafetensorsWriter(Path.Combine(folder, LoraAdapter.WeightsFileName), specs))
        {
            int s = seed;
            foreach (var t in w.Layout) w.AppendSingles(t.Name, t.Name == CopyKey ? copy : Random((int)t.ElementCount, s++));
            w.Commit();
        }
        if (projector)
        {
            using var w = new SafetensorsWriter(Path.Combine(folder, LoraAdapter.TrainablesName + ".safetensors"),
                [new TensorSpec(ProjW, DType.F32, [Hidden, Proj]), new TensorSpec(ProjB, DType.F32, [Hidden])]);
            int s = seed + 50;
            foreach (var t in w.Layout) w.AppendSingles(t.Name, Random((int)t.ElementCount, s++));
            w.Commit();
        }
        return folder;
    }

    private static float[] Read(string file, string tensor)
    {
        using var f = SafetensorsFile.Open(file);
        return f.ReadSingles(f.Get(tensor));
    }

    private static string Weights(string adapter) => Path.Combine(adapter, LoraAdapter.WeightsFileName);

    private static string Trainables(string adapter) => Path.Combine(adapter, LoraAdapter.TrainablesName + ".safetensors");

    private static float[] Mean(double[] w, params float[][] xs) =>
        Enumerable.Range(0, xs[0].Length).Select(i => (float)(Enumerable.Range(0, xs.Length).Sum(n => w[n] * xs[n][i]) / w.Sum())).ToArray();

    [Fact]
    public void AdapterOutput_WritesTheMeans_CarriesTheCopy_AndListsModulesToSave()
    {
        using var dir = new TempDir();
        var copy = Random(Vocab * Hidden, 7);
        var a0 = WriteAdapter(Path.Combine(dir.Path, "a0"), 10, copy);
        var a1 = WriteAdapter(Path.Combine(dir.Path, "a1"), 20, copy);
        var output = Path.Combine(dir.Path, "out");
        var (code, stdout, err) = CliRunner.Run("merge", "--method", "copa", "--adapter", a0, "--adapter", a1, "--out", output);
        Assert.True(code == 0, err);
        Assert.Contains("4 full tensors beside the factors: 3 merged as the mean, 1 base-layer copy carried through", stdout);

        // The plain mean (copa reads no weights), as the released CoPA code averages the projector.
        Assert.Equal(Mean([1, 1], Read(Weights(a0), LmKey), Read(Weights(a1), LmKey)), Read(Weights(output), LmKey));
        Assert.Equal(Mean([1, 1], Read(Trainables(a0), ProjW), Read(Trainables(a1), ProjW)), Read(Trainables(output), ProjW));
        Assert.Equal(Mean([1, 1], Read(Trainables(a0), ProjB), Read(Trainables(a1), ProjB)), Read(Trainables(output), ProjB));
        Assert.Equal(copy, Read(Weights(output), CopyKey));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output, AdapterConfig.FileName)))!;
        Assert.Equal(["lm_head"], config["modules_to_save"]!.AsArray().Select(x => (string)x!));
        // The output reads back as an adapter with the same full tensors.
        using (var merged = LoraAdapter.Open(output))
            Assert.Equal([LmKey, CopyKey, ProjB, ProjW], merged.FullTensors.Select(f => f.Key).Order(StringComparer.Ordinal));
        var report = MergeReport.FromJson(File.ReadAllText(Path.Combine(output, MergeReport.FileName)));
        Assert.Equal(4, report.FullTensors!.Count);
        Assert.Equal("copy", report.FullTensors.Single(f => f.Key == CopyKey).Rule);
        Assert.All(report.FullTensors.Where(f => f.Key != CopyKey), f => Assert.Equal("mean", f.Rule));
    }

    [Fact]
    public void ModelOutput_ReplacesTheBaseTensors_AndAddsTheEmbeddingDeltaToTheCopy()
    {
        using var dir = new TempDir();
        var baseDir = WriteBase(Path.Combine(dir.Path, "base"));
        // A copy that differs from the base's embedding: PEFT loads it in place of the base's, so ΔW goes onto it.
        var copy = Random(Vocab * Hidden, 8);
        var a0 = WriteAdapter(Path.Combine(dir.Path, "a0"), 30, copy);
        var a1 = WriteAdapter(Path.Combine(dir.Path, "a1"), 40, copy);
        var output = Path.Combine(dir.Path, "out");
        var (code, _, err) = CliRunner.Run("merge", "--method", "task-arithmetic", "--space", "delta", "--weight", "1", "--weight", "3",
            "--adapter", a0, "--adapter", a1, "--base", baseDir, "--output", "model", "--out", output, "--quiet");
        Assert.True(code == 0, err);
        var file = Path.Combine(output, "model.safetensors");
        double[] w = [1, 3];

        // lm_head stays BF16 (the base's dtype): the weighted mean rounded once.
        var lm = Mean(w, Read(Weights(a0), LmKey), Read(Weights(a1), LmKey));
        var bf16 = new byte[lm.Length * 2];
        CopaKernels.Formats.Numerics.ElementCodec.Encode(DType.BF16, lm, bf16);
        using (var f = SafetensorsFile.Open(file))
        {
            var t = f.Get("lm_head.weight");
            Assert.Equal(DType.BF16, t.DType);
            var got = new byte[t.ByteLength];
            f.ReadBytes(t, 0, got);
            Assert.Equal(bf16, got);
        }
        Assert.Equal(Mean(w, Read(Trainables(a0), ProjW), Read(Trainables(a1), ProjW)), Read(file, "model.mm_projector.0.weight"));

        // The embedding: copy + Σ_n w_n·(α/r)·(B_n·A_n)ᵀ.
        var want = copy.Select(x => (double)x).ToArray();
        for (int n = 0; n < 2; n++)
        {
            var a = Read(Weights(n == 0 ? a0 : a1), LoraAdapter.KeyA(Embed, true));
            var b = Read(Weights(n == 0 ? a0 : a1), LoraAdapter.KeyB(Embed, true));
            for (int v = 0; v < Vocab; v++)
                for (int h = 0; h < Hidden; h++)
                {
                    double s = 0;
                    for (int k = 0; k < Rank; k++) s += (double)b[h * Rank + k] * a[k * Vocab + v];
                    want[v * Hidden + h] += w[n] * 2.0 * s;
                }
        }
        var embed = Read(file, Embed + ".weight");
        for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(embed[i] - want[i]) <= 1e-5 * (1 + Math.Abs(want[i])), $"{i}: {embed[i]} vs {want[i]}");
    }

    [Fact]
    public void FullTensorInSomeAdapters_IsTheMeanOverThose()
    {
        using var dir = new TempDir();
        var copy = Random(Vocab * Hidden, 9);
        var a0 = WriteAdapter(Path.Combine(dir.Path, "a0"), 50, copy, lmHead: true, projector: false);
        var a1 = WriteAdapter(Path.Combine(dir.Path, "a1"), 60, copy, lmHead: false, projector: true);
        var output = Path.Combine(dir.Path, "out");
        var (code, _, err) = CliRunner.Run("merge", "--method", "ties", "--weight", "2", "--weight", "5", "--adapter", a0, "--adapter", a1, "--out", output, "--quiet");
        Assert.True(code == 0, err);
        Assert.Equal(Read(Weights(a0), LmKey), Read(Weights(output), LmKey));
        Assert.Equal(Read(Trainables(a1), ProjW), Read(Trainables(output), ProjW));
        var report = MergeReport.FromJson(File.ReadAllText(Path.Combine(output, MergeReport.FileName)));
        Assert.Equal([0], report.FullTensors!.Single(f => f.Key == LmKey).Adapters);
        Assert.Equal([1], report.FullTensors!.Single(f => f.Key == ProjW).Adapters);
        Assert.Equal("weighted_mean", report.FullTensors!.Single(f => f.Key == LmKey).Rule);
    }

    [Fact]
    public void TrainedCopyInOneAdapter_AndLoraOnTheSameWeightInAnother_IsAnError()
    {
        using var dir = new TempDir();
        var copy = Random(Vocab * Hidden, 4);
        var a0 = WriteAdapter(Path.Combine(dir.Path, "a0"), 90, copy, lmHead: true, projector: false);
        // Adapter 1 puts LoRA on lm_head instead of saving it.
        var a1 = Path.Combine(dir.Path, "a1");
        Directory.CreateDirectory(a1);
        File.WriteAllText(Path.Combine(a1, AdapterConfig.FileName), AdapterWriter.MakeConfig(Rank, 8, ["lm_head"], null).ToJsonString());
        using (var w = new SafetensorsWriter(Path.Combine(a1, LoraAdapter.WeightsFileName),
                   [new TensorSpec(LoraAdapter.KeyA("lm_head"), DType.F32, [Rank, Hidden]), new TensorSpec(LoraAdapter.KeyB("lm_head"), DType.F32, [Vocab, Rank])]))
        {
            foreach (var t in w.Layout) w.AppendSingles(t.Name, Random((int)t.ElementCount, 3));
            w.Commit();
        }
        var output = Path.Combine(dir.Path, "out");
        var (code, _, err) = CliRunner.Run("merge", "--method", "copa", "--adapter", a0, "--adapter", a1, "--out", output);
        Assert.Equal(2, code);
        Assert.StartsWith($"error: {Weights(a0)}: {LmKey}: is a full modules_to_save tensor here but lm_head.weight has LoRA factors in {a1}", err.Trim());
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void ModelOutput_FullTensorWithoutItsBaseTensor_IsAnError()
    {
        using var dir = new TempDir();
        var baseDir = WriteBase(Path.Combine(dir.Path, "base"));
        var copy = Random(Vocab * Hidden, 5);
        var a0 = WriteAdapter(Path.Combine(dir.Path, "a0"), 91, copy);
        // A projector key the base does not have.
        using (var w = new SafetensorsWriter(Trainables(a0) + ".tmp", [new TensorSpec("base_model.model.model.mm_projector.2.weight", DType.F32, [Hidden, Hidden])]))
        {
            w.AppendSingles("base_model.model.model.mm_projector.2.weight", Random(Hidden * Hidden, 6));
            w.Commit();
        }
        File.Move(Trainables(a0) + ".tmp", Trainables(a0), overwrite: true);
        var output = Path.Combine(dir.Path, "out");
        var (code, _, err) = CliRunner.Run("merge", "--method", "copa", "--adapter", a0, "--base", baseDir, "--output", "model", "--out", output);
        Assert.Equal(2, code);
        Assert.Contains("base_model.model.model.mm_projector.2.weight: stands for base tensor 'model.mm_projector.2.weight', which is not in the base model", err);
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void CopiesThatDiffer_AndFullTensorsInDeltaOutput_AreErrors_WithNoOutput()
    {
        using var dir = new TempDir();
        var a0 = WriteAdapter(Path.Combine(dir.Path, "a0"), 70, Random(Vocab * Hidden, 1));
        var a1 = WriteAdapter(Path.Combine(dir.Path, "a1"), 80, Random(Vocab * Hidden, 2));
        var output = Path.Combine(dir.Path, "out");
        var (code, _, err) = CliRunner.Run("merge", "--method", "copa", "--adapter", a0, "--adapter", a1, "--out", output);
        Assert.Equal(2, code);
        Assert.Equal($"error: {Weights(a1)}: {CopyKey}: differs from the copy in {Weights(a0)}; PEFT loads this copy in place of the base's weight, so the adapters must agree on it",
            err.Trim());
        Assert.False(Directory.Exists(output));

        var copy = Random(Vocab * Hidden, 3);
        var b0 = WriteAdapter(Path.Combine(dir.Path, "b0"), 70, copy);
        var b1 = WriteAdapter(Path.Combine(dir.Path, "b1"), 80, copy);
        (code, _, err) = CliRunner.Run("merge", "--method", "copa", "--adapter", b0, "--adapter", b1, "--out", output, "--output", "delta");
        Assert.Equal(2, code);
        Assert.Contains("cannot go into delta output", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.False(Directory.Exists(output));
    }
}
