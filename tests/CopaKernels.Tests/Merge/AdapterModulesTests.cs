using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;
using CopaKernels.Tests.Formats;

namespace CopaKernels.Tests.Merge;

public class AdapterModulesTests
{
    [Fact]
    public void DeferredModule_ReadOnDemand_IsTheSameModule_AndMergesTheSame()
    {
        using var dir = new TempDir();
        var folders = Enumerable.Range(0, 3).Select(i => TestAdapters.Write(Path.Combine(dir.Path, $"d{i}"), r: 4, alpha: 8, dtype: DType.BF16, seed: i + 7)).ToList();
        var adapters = folders.Select(LoraAdapter.Open).ToList();
        try
        {
            using var backend = new CpuBackend(2);
            foreach (var path in AdapterModules.Plan(adapters))
            {
                var eager = AdapterModules.Load(adapters, path);
                // Arrays filled with a marker: a factor the method forgot to read would show it.
                var deferred = AdapterModules.Load(adapters, path, n => Enumerable.Repeat(float.NaN, n).ToArray(), defer: true);
                Assert.True(deferred.Factors.AnyInFile);
                Assert.Equal(CopaKernels.Merge.Factors.FactorHome.File, deferred.Factors.Home(0, b: true));
                foreach (var method in new[] { "copa", "copa-official" })
                {
                    var want = (LowRankResult)MergeMethods.Get(method).MergeModule(backend, eager, new MergeOptions { Method = method });
                    var fresh = AdapterModules.Load(adapters, path, n => Enumerable.Repeat(float.NaN, n).ToArray(), defer: true);
                    var got = (LowRankResult)MergeMethods.Get(method).MergeModule(backend, fresh, new MergeOptions { Method = method });
                    Assert.Equal(want.A, got.A);
                    Assert.Equal(want.B, got.B);
                    Assert.Equal(want.Stats.ThresholdsA, got.Stats.ThresholdsA);
                }
                deferred.Factors.ReadAllF32();
                Assert.False(deferred.Factors.AnyInFile);
                for (int t = 0; t < 3; t++)
                {
                    Assert.Equal(eager.Tasks[t].A, deferred.Tasks[t].A);
                    Assert.Equal(eager.Tasks[t].B, deferred.Tasks[t].B);
                }
            }
        }
        finally
        {
            foreach (var a in adapters) a.Dispose();
        }
    }

    [Fact]
    public void RealAdapterFolders_LoadAndMerge()
    {
        using var dir = new TempDir();
        var folders = Enumerable.Range(0, 3).Select(i => TestAdapters.Write(Path.Combine(dir.Path, $"a{i}"), r: 4, alpha: 8, dtype: DType.BF16, seed: i + 1)).ToList();
        var adapters = folders.Select(LoraAdapter.Open).ToList();
        try
        {
            var modules = AdapterModules.Plan(adapters);
            Assert.Equal(TestAdapters.SmallModules.Length, modules.Count);
            Assert.All(modules, x => Assert.Equal([0, 1, 2], x.Adapters));
            using var backend = new CpuBackend();
            foreach (var path in modules.Select(x => x.Path))
            {
                var m = AdapterModules.Load(adapters, path);
                Assert.Equal(3, m.Tasks.Count);
                var spec = TestAdapters.SmallModules.Single(s => s.Path == path);
                Assert.Equal((spec.DOut, spec.DIn), (m.DOut, m.DIn));
                Assert.All(m.Tasks, t => Assert.Equal(2.0, t.Scale));
                // The BF16 values arrive widened exactly.
                var raw = new byte[adapters[1].Modules.Single(x => x.Path == path).A.ByteLength];
                adapters[1].Weights.ReadBytes(adapters[1].Modules.Single(x => x.Path == path).A, 0, raw);
                Assert.Equal((uint)BitConverter.ToUInt16(raw, 0) << 16, BitConverter.SingleToUInt32Bits(m.Tasks[1].A[0]));
                var r = (LowRankResult)MergeMethods.Get("copa").MergeModule(backend, m, new MergeOptions { Method = "copa" });
                Assert.Equal(12, r.Rank);
            }
        }
        finally
        {
            foreach (var a in adapters) a.Dispose();
        }
    }

    [Fact]
    public void DifferentModuleSets_GiveTheUnion_EachWithItsAdapters_DifferentShapesAreRejected()
    {
        using var dir = new TempDir();
        var a0 = TestAdapters.Write(Path.Combine(dir.Path, "a0"));
        var cfg = AdapterWriter.MakeConfig(4, 8, ["q_proj", "o_proj"], null);
        var a1 = TestAdapters.WriteRaw(Path.Combine(dir.Path, "a1"), cfg,
        [
            new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType.F32, [4, 16]),
            new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", DType.F32, [24, 4]),
            new("base_model.model.model.layers.9.self_attn.o_proj.lora_A.weight", DType.F32, [4, 24]),
            new("base_model.model.model.layers.9.self_attn.o_proj.lora_B.weight", DType.F32, [16, 4]),
        ]);
        var a2 = TestAdapters.WriteRaw(Path.Combine(dir.Path, "a2"), cfg,
        [
            new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType.F32, [4, 16]),
            new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", DType.F32, [20, 4]),
        ]);
        using var x0 = LoraAdapter.Open(a0);
        using var x1 = LoraAdapter.Open(a1);
        using var x2 = LoraAdapter.Open(a2);
        var union = AdapterModules.Plan([x0, x1]);
        var expected = x0.Modules.Select(m => m.Path).Append("model.layers.9.self_attn.o_proj").Order(StringComparer.Ordinal).ToList();
        Assert.Equal(expected, union.Select(m => m.Path).ToList());
        Assert.Equal([0, 1], union.Single(m => m.Path == "model.layers.0.self_attn.q_proj").Adapters);
        Assert.Equal([1], union.Single(m => m.Path == "model.layers.9.self_attn.o_proj").Adapters);
        Assert.All(union.Where(m => m.Path is not ("model.layers.0.self_attn.q_proj" or "model.layers.9.self_attn.o_proj")),
            m => Assert.Equal([0], m.Adapters));
        // A module of only some adapters loads theirs, and says which they are.
        var only = AdapterModules.Load([x0, x1], union.Single(m => m.Path == "model.layers.9.self_attn.o_proj"));
        Assert.Single(only.Tasks);
        Assert.Equal(1, only.AdapterOf(0));
        var e2 = Assert.Throws<CopaInputException>(() => AdapterModules.Plan([x1, x2]));
        Assert.Equal(a2, e2.FilePath);
        Assert.Equal("model.layers.0.self_attn.q_proj", e2.Tensor);
        Assert.Contains("20 × 16 here but 24 × 16", e2.Message);
    }
}
