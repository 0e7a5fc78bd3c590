using CopaKernels.Cli.Demo;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// A small synthetic Llama (2 layers, BF16, 3 shards) and three BF16 rank-4 adapters on all seven
/// projections, written once for the streaming-merge tests, plus the reference: each module merged
/// directly with the library's method on the CPU backend.
/// </summary>
public sealed class StreamingFixture : IDisposable
{
    internal static readonly LlamaShape Shape = new("test", 64, 96, 2, 4, 2, 100, 30_000);

    private readonly TempDir _dir = new();

    public StreamingFixture()
    {
        Base = Path.Combine(_dir.Path, "base");
        SyntheticModel.WriteBase(Base, Shape, 7);
        File.WriteAllText(Path.Combine(Base, "tokenizer.json"), "{}\n");
        Adapters = Enumerable.Range(0, 3)
            .Select(i =>
            {
                var a = Path.Combine(_dir.Path, $"adapter{i}");
                SyntheticModel.WriteAdapter(a, Shape, 4, 8, (ulong)(50 + i), Base);
                return a;
            }).ToList();
    }

    public string Root => _dir.Path;

    public string Base { get; }

    public List<string> Adapters { get; }

    /// <summary>A fresh output path under the fixture's folder.</summary>
    public string NewOutput(string label) => Path.Combine(_dir.Path, "out", $"{label}-{Guid.NewGuid():N}");

    /// <summary>Every module merged directly with the library (the reference the streamed output must match).</summary>
    internal Dictionary<string, ModuleResult> Reference(MergeOptions options)
    {
        var adapters = Adapters.Select(LoraAdapter.Open).ToList();
        try
        {
            using var backend = new CpuBackend();
            var method = MergeMethods.Get(options.Method);
            return AdapterModules.Plan(adapters).ToDictionary(p => p.Path,
                p => method.MergeModule(backend, AdapterModules.Load(adapters, p), options));
        }
        finally
        {
            foreach (var a in adapters) a.Dispose();
        }
    }

    /// <summary>ΔW of a result, d_out × d_in, in double.</summary>
    internal static double[] Dense(ModuleResult r, int dOut, int dIn)
    {
        var d = new double[dOut * dIn];
        switch (r)
        {
            case DenseResult dense:
                for (int i = 0; i < d.Length; i++) d[i] = dense.Delta[i];
                break;
            case LowRankResult lr:
                for (int i = 0; i < dOut; i++)
                    for (int k = 0; k < lr.Rank; k++)
                    {
                        double b = lr.B[i * lr.Rank + k] * lr.Scale;
                        for (int j = 0; j < dIn; j++) d[i * dIn + j] += b * lr.A[k * dIn + j];
                    }
                break;
        }
        return d;
    }

    /// <summary>Asserts that every tensor of safetensors file <paramref name="a"/> has the same bytes in <paramref name="b"/> (headers may differ: provenance).</summary>
    internal static void AssertSameTensorBytes(string a, string b, string label = "")
    {
        using var fa = SafetensorsFile.Open(a);
        using var fb = SafetensorsFile.Open(b);
        foreach (var t in fa.Tensors)
        {
            var x = new byte[t.ByteLength];
            var y = new byte[t.ByteLength];
            fa.ReadBytes(t, 0, x);
            fb.ReadBytes(fb.Get(t.Name), 0, y);
            Assert.True(x.AsSpan().SequenceEqual(y), $"{label}{t.Name} differs");
        }
    }

    /// <summary>Hashes every file under <paramref name="dir"/> (name, size, content) to prove inputs were not touched.</summary>
    internal static string Fingerprint(string dir)
    {
        using var sha = System.Security.Cryptography.SHA256.Create();
        foreach (var f in Directory.GetFiles(dir, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            var name = System.Text.Encoding.UTF8.GetBytes(Path.GetRelativePath(dir, f));
            sha.TransformBlock(name, 0, name.Length, null, 0);
            var bytes = File.ReadAllBytes(f);
            sha.TransformBlock(bytes, 0, bytes.Length, null, 0);
        }
        sha.TransformFinalBlock([], 0, 0);
        return Convert.ToHexString(sha.Hash!);
    }

    /// <summary>Private copies of the base and the adapters under <paramref name="dir"/>, for tests that change their inputs.</summary>
    internal (string Base, List<string> Adapters) CopyInputs(TempDir dir)
    {
        static void Copy(string from, string to)
        {
            Directory.CreateDirectory(to);
            foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
        }
        var b = Path.Combine(dir.Path, "base");
        Copy(Base, b);
        var adapters = new List<string>();
        for (int i = 0; i < Adapters.Count; i++)
        {
            var a = Path.Combine(dir.Path, $"adapter{i}");
            Copy(Adapters[i], a);
            adapters.Add(a);
        }
        return (b, adapters);
    }

    /// <summary>Overwrites element <paramref name="element"/> of a 16-bit tensor in a safetensors file with <paramref name="bits"/>.</summary>
    internal static void Poke16(string file, string tensor, long element, ushort bits)
    {
        long at;
        using (var f = SafetensorsFile.Open(file))
        {
            var t = f.Get(tensor);
            Assert.Equal(16, t.DType.Bits());
            at = f.DataStart + t.Begin + element * 2;
        }
        using var s = new FileStream(file, FileMode.Open, FileAccess.Write);
        s.Seek(at, SeekOrigin.Begin);
        s.Write(BitConverter.GetBytes(bits));
    }

    /// <summary>A base tensor as F32.</summary>
    internal static float[] Read(string model, string tensor)
    {
        using var m = ShardedModel.Open(model);
        Assert.True(m.TryGet(tensor, out var f, out var t), $"{tensor} missing in {model}");
        return f.ReadSingles(t);
    }

    public void Dispose() => _dir.Dispose();
}
