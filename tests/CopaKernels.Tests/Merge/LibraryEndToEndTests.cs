using System.Runtime.InteropServices;
using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;
using CopaKernels.Tests.Formats;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// The library used as the README shows: read PEFT adapters, merge every module with copa on the CPU
/// backend, write a PEFT adapter of rank Σ r (scale 1), and read it back as a valid adapter whose
/// product equals the merge.
/// </summary>
public class LibraryEndToEndTests
{
    [Fact]
    public void ReadMergeWriteReadBack_CopaAdapterOfRankSum()
    {
        using var dir = new TempDir();
        var inputs = Enumerable.Range(0, 2).Select(i => TestAdapters.Write(Path.Combine(dir.Path, $"in{i}"), r: 4, alpha: 8, dtype: DType.BF16, seed: 10 + i)).ToList();
        var adapters = inputs.Select(LoraAdapter.Open).ToList();
        var outPath = Path.Combine(dir.Path, "merged");
        var merged = new Dictionary<string, LowRankResult>();
        try
        {
            using var backend = new CpuBackend();
            var options = new MergeOptions { Method = "copa" };
            options.Validate(adapters.Count);
            foreach (var path in AdapterModules.Plan(adapters))
                merged[path.Path] = (LowRankResult)MergeMethods.Get("copa").MergeModule(backend, AdapterModules.Load(adapters, path), options);

            int rank = merged.Values.First().Rank;
            Assert.All(merged.Values, r => Assert.Equal(rank, r.Rank));
            using var folder = AtomicFolder.Create(outPath);
            var config = AdapterWriter.MakeConfig(rank, rank, adapters[0].Config.TargetModules, adapters[0].Config.BaseModelNameOrPath, adapters[0].Config.Raw);
            var specs = merged.Select(kv => new AdapterModuleSpec(kv.Key, kv.Value.B.Length / rank, kv.Value.A.Length / rank, rank));
            using (var writer = new AdapterWriter(folder.TempPath, config, specs, DType.F32))
            {
                foreach (var t in writer.Weights.Layout)
                {
                    var path = t.Name[LoraAdapter.KeyPrefix.Length..^".lora_A.weight".Length];
                    var r = merged[path];
                    writer.Weights.AppendSingles(t.Name, t.Name.EndsWith(".lora_A.weight") ? r.A : r.B);
                }
                writer.Commit();
            }
            folder.Commit();
        }
        finally
        {
            foreach (var a in adapters) a.Dispose();
        }

        using var back = LoraAdapter.Open(outPath);
        Assert.Equal(8, back.Config.R);
        Assert.Equal(TestAdapters.SmallModules.Length, back.Modules.Count);
        foreach (var m in back.Modules)
        {
            Assert.Equal(1.0, m.Scale);
            Assert.Equal(merged[m.Path].A, back.Weights.ReadSingles(m.A));
            Assert.Equal(merged[m.Path].B, back.Weights.ReadSingles(m.B));
        }
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path, ".copa-*"));
    }
}
