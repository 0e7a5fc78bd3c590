using System.Text.Json.Nodes;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Tests.Formats;

/// <summary>Builds PEFT adapter folders for tests.</summary>
internal static class TestAdapters
{
    public static readonly (string Path, int DOut, int DIn)[] SmallModules =
    [
        ("model.layers.0.self_attn.q_proj", 24, 16),
        ("model.layers.0.self_attn.v_proj", 8, 16),
        ("model.layers.0.mlp.up_proj", 40, 16),
        ("model.layers.1.self_attn.q_proj", 24, 16),
    ];

    /// <summary>A valid adapter with seeded Gaussian-ish B and uniform A.</summary>
    public static string Write(string folder, int r = 4, double alpha = 8, DType dtype = DType.F32, int seed = 1,
        Action<JsonObject>? editConfig = null, Func<string, int>? rankOf = null)
    {
        Directory.CreateDirectory(folder);
        var config = AdapterWriter.MakeConfig(r, alpha, ["q_proj", "v_proj", "up_proj"], "test/base");
        editConfig?.Invoke(config);
        var modules = SmallModules.Select(m => new AdapterModuleSpec(m.Path, m.DOut, m.DIn, rankOf?.Invoke(m.Path) ?? r)).ToList();
        using var w = new AdapterWriter(folder, config, modules, dtype);
        var rng = new Random(seed);
        foreach (var t in w.Weights.Layout)
        {
            var v = new float[t.ElementCount];
            for (int i = 0; i < v.Length; i++) v[i] = (float)(rng.NextDouble() - 0.5);
            w.Weights.AppendSingles(t.Name, v);
        }
        w.Commit();
        return folder;
    }

    /// <summary>An adapter folder whose weights file holds exactly the given tensors (zeros), for error cases.</summary>
    public static string WriteRaw(string folder, JsonObject config, IEnumerable<TensorSpec> tensors)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, AdapterConfig.FileName), config.ToJsonString());
        using var w = new SafetensorsWriter(Path.Combine(folder, LoraAdapter.WeightsFileName), tensors);
        foreach (var t in w.Layout) w.Append(t.Name, new byte[t.ByteLength]);
        w.Commit();
        return folder;
    }
}
