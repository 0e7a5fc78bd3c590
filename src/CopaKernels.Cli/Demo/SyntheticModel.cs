using System.Text.Json;
using System.Text.Json.Nodes;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using static CopaKernels.Kernels.CounterRandom;

namespace CopaKernels.Cli.Demo;

/// <summary>The shape of a Llama-style decoder (the projections LoRA usually targets).</summary>
/// <param name="Name">Preset name.</param>
/// <param name="Hidden">hidden_size.</param>
/// <param name="Intermediate">intermediate_size.</param>
/// <param name="Layers">num_hidden_layers.</param>
/// <param name="Heads">num_attention_heads.</param>
/// <param name="KvHeads">num_key_value_heads.</param>
/// <param name="Vocab">vocab_size.</param>
/// <param name="ShardBytes">Shard size of the generated base.</param>
internal sealed record LlamaShape(string Name, int Hidden, int Intermediate, int Layers, int Heads, int KvHeads, int Vocab, long ShardBytes)
{
    /// <summary>A 20M-parameter model: the demo merges it in seconds.</summary>
    public static readonly LlamaShape Tiny = new("tiny", 512, 1376, 4, 8, 4, 8000, 16_000_000);

    /// <summary>Llama-2-7B's shape.</summary>
    public static readonly LlamaShape Llama7B = new("llama-7b", 4096, 11008, 32, 32, 32, 32000, 2_000_000_000);

    /// <summary>The seven projections LoRA targets, with their d_out × d_in.</summary>
    public IEnumerable<(string Module, int DOut, int DIn)> Projections
    {
        get
        {
            int kv = Hidden / Heads * KvHeads;
            yield return ("self_attn.q_proj", Hidden, Hidden);
            yield return ("self_attn.k_proj", kv, Hidden);
            yield return ("self_attn.v_proj", kv, Hidden);
            yield return ("self_attn.o_proj", Hidden, Hidden);
            yield return ("mlp.gate_proj", Intermediate, Hidden);
            yield return ("mlp.up_proj", Intermediate, Hidden);
            yield return ("mlp.down_proj", Hidden, Intermediate);
        }
    }

    /// <summary>Every base tensor, in the order Hugging Face writes them.</summary>
    public IEnumerable<(string Name, long[] Shape)> Tensors
    {
        get
        {
            yield return ("model.embed_tokens.weight", [Vocab, Hidden]);
            for (int l = 0; l < Layers; l++)
            {
                yield return ($"model.layers.{l}.input_layernorm.weight", [Hidden]);
                foreach (var (m, o, i) in Projections) yield return ($"model.layers.{l}.{m}.weight", [o, i]);
                yield return ($"model.layers.{l}.post_attention_layernorm.weight", [Hidden]);
            }
            yield return ("model.norm.weight", [Hidden]);
            yield return ("lm_head.weight", [Vocab, Hidden]);
        }
    }
}

/// <summary>
/// Writes synthetic Llama-shaped base models (sharded BF16 safetensors + config.json) and PEFT LoRA
/// adapters for them, deterministically from a seed. Adapters follow what the CoPA paper observes of
/// trained LoRA: A close to uniform (its Kaiming-uniform init), B Gaussian.
/// </summary>
internal static class SyntheticModel
{
    /// <summary>Writes the base model into <paramref name="folder"/> (created).</summary>
    public static void WriteBase(string folder, LlamaShape shape, ulong seed, Action<long, string?>? progress = null)
    {
        Directory.CreateDirectory(folder);
        var specs = shape.Tensors.Select(t => new TensorSpec(t.Name, DType.BF16, t.Shape)).ToList();
        var pool = Gaussian(1 << 20, 0.02f, seed);
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        using (var writer = new ShardedWriter(folder, ShardedWriter.PlanBySize(specs, shape.ShardBytes), meta))
        {
            const int chunk = 1 << 16;
            var buf = new float[chunk];
            foreach (var t in writer.WriteOrder)
            {
                var w = writer.For(t.Name);
                bool norm = t.Shape.Length == 1;
                ulong key = Hash(seed, t.Name);
                for (long done = 0; done < t.ElementCount; done += chunk)
                {
                    int n = (int)Math.Min(chunk, t.ElementCount - done);
                    if (norm) buf.AsSpan(0, n).Fill(1f);
                    else
                    {
                        // Base weights only need to look like weights: a random window of a Gaussian pool
                        // fills a multi-GB model at memory speed.
                        int start = (int)(Mix(key + (ulong)done) % (ulong)(pool.Length - chunk));
                        pool.AsSpan(start, n).CopyTo(buf);
                    }
                    w.AppendSingles(t.Name, buf.AsSpan(0, n));
                    progress?.Invoke(n * 2L, null);
                }
                progress?.Invoke(0, t.Name);
            }
            writer.Commit();
        }
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["hidden_size"] = shape.Hidden,
            ["intermediate_size"] = shape.Intermediate,
            ["num_hidden_layers"] = shape.Layers,
            ["num_attention_heads"] = shape.Heads,
            ["num_key_value_heads"] = shape.KvHeads,
            ["vocab_size"] = shape.Vocab,
            ["max_position_embeddings"] = 4096,
            ["rms_norm_eps"] = 1e-5,
            ["torch_dtype"] = "bfloat16",
            ["tie_word_embeddings"] = false,
            ["copa_synthetic"] = $"preset {shape.Name}, seed {seed}",
        };
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>Writes a PEFT LoRA adapter (BF16) on all seven projections of every layer.</summary>
    public static void WriteAdapter(string folder, LlamaShape shape, int rank, double alpha, ulong seed, string? baseModel)
    {
        Directory.CreateDirectory(folder);
        var modules = new List<AdapterModuleSpec>();
        for (int l = 0; l < shape.Layers; l++)
            foreach (var (m, o, i) in shape.Projections)
                modules.Add(new AdapterModuleSpec($"model.layers.{l}.{m}", o, i, rank));
        var byPath = modules.ToDictionary(m => m.Path);
        var targets = shape.Projections.Select(p => p.Module[(p.Module.IndexOf('.') + 1)..]);
        var config = AdapterWriter.MakeConfig(rank, alpha, targets, baseModel);
        using var writer = new AdapterWriter(folder, config, modules, DType.BF16);
        foreach (var t in writer.Weights.Layout)
        {
            bool isA = t.Name.EndsWith(".lora_A.weight", StringComparison.Ordinal);
            var m = byPath[t.Name[LoraAdapter.KeyPrefix.Length..^".lora_A.weight".Length]];
            ulong key = Hash(seed, t.Name);
            var values = isA
                ? Uniform(checked((int)t.ElementCount), (float)(1 / Math.Sqrt(m.DIn)), key)
                : Gaussian(checked((int)t.ElementCount), 0.01f, key);
            writer.Weights.AppendSingles(t.Name, values);
        }
        writer.Commit();
    }

    private static float[] Uniform(int n, float bound, ulong key)
    {
        var x = new float[n];
        ulong s = key;
        for (int i = 0; i < n; i++) x[i] = (float)(2 * Unit(ref s) - 1) * bound;
        return x;
    }

    /// <summary>n values of N(0, σ²), deterministic in <paramref name="key"/>.</summary>
    internal static float[] Gaussian(int n, float sigma, ulong key)
    {
        var x = new float[n];
        ulong s = key;
        for (int i = 0; i < n; i += 2)
        {
            // Box–Muller on two uniform draws; 1 − u keeps the logarithm finite.
            double u1 = 1 - Unit(ref s), u2 = Unit(ref s);
            double r = Math.Sqrt(-2 * Math.Log(u1)) * sigma;
            x[i] = (float)(r * Math.Cos(2 * Math.PI * u2));
            if (i + 1 < n) x[i + 1] = (float)(r * Math.Sin(2 * Math.PI * u2));
        }
        return x;
    }

    private static double Unit(ref ulong state)
    {
        state += 0x9E3779B97F4A7C15UL;
        return (Mix(state) >> 11) * (1.0 / (1UL << 53));
    }

    private static ulong Hash(ulong seed, string name)
    {
        ulong h = Mix(seed + 0x9E3779B97F4A7C15UL);
        foreach (char c in name) h = Mix(h ^ c);
        return h;
    }
}
