using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Merge;
using CopaKernels.Merge.Streaming;
using CopaKernels.Tests.Cli;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// <c>copa merge</c> end to end on generated models: every method and output mode against the
/// library's own per-module merge, the tiled path, atomicity under failure and cancellation.
/// </summary>
public sealed class StreamingMergeTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    public static TheoryData<string, string, string> Cases()
    {
        var d = new TheoryData<string, string, string>();
        foreach (var m in MergeMethods.Names)
        {
            d.Add(m, "factors", "adapter");
            d.Add(m, "factors", "model");
        }
        d.Add("task-arithmetic", "delta", "adapter");
        foreach (var m in new[] { "ties", "dare", "magnitude-prune", "pcb", "task-arithmetic" }) d.Add(m, "delta", "model");
        d.Add("copa", "factors", "delta");
        d.Add("ties", "delta", "delta");
        return d;
    }

    private (int Code, string Out, string Err) Merge(string output, params string[] extra)
    {
        var args = new List<string> { "merge", "--out", output, "--quiet" };
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        args.AddRange(extra);
        return CliRunner.Run(args.ToArray());
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EveryMethodAndOutput_MatchesTheLibraryMerge(string method, string space, string mode)
    {
        var output = fx.NewOutput($"{method}-{space}-{mode}");
        var inputsBefore = StreamingFixture.Fingerprint(fx.Root + "/adapter0") + StreamingFixture.Fingerprint(fx.Base);
        // Only the parameters the method reads: any other one is refused (it would do nothing).
        var reads = MergeMethods.Get(method).Parameters;
        var flags = new List<string> { "--method", method, "--output", mode, "--base", fx.Base, "--out-dtype", "f32" };
        if (reads.Space) flags.AddRange(["--space", space]);
        if (reads.Seed) flags.AddRange(["--seed", "3"]);
        if (reads.Weights) flags.AddRange(["--weight", "1", "--weight", "0.5", "--weight", "-0.25"]);
        var (code, _, err) = Merge(output, flags.ToArray());
        Assert.True(code == 0, err);
        Assert.Equal(inputsBefore, StreamingFixture.Fingerprint(fx.Root + "/adapter0") + StreamingFixture.Fingerprint(fx.Base));
        var options = new MergeOptions
        {
            Method = method,
            Space = reads.Space ? space == "delta" ? MergeSpace.Delta : MergeSpace.Factors : null,
            Seed = reads.Seed ? 3 : null,
            Weights = reads.Weights ? [1, 0.5, -0.25] : null,
        };
        var reference = fx.Reference(options);
        var report = MergeReport.FromJson(File.ReadAllText(Path.Combine(output, MergeReport.FileName)));
        Assert.Equal(method, report.Method);
        Assert.Equal(reference.Count, report.Summary.Modules);
        Assert.True(report.Memory.PeakRss > 0);

        foreach (var (path, expected) in reference)
        {
            var (_, dOut, dIn) = Dims(path);
            switch (mode)
            {
                case "adapter":
                {
                    using var a = LoraAdapter.Open(output);
                    var m = a.Modules.Single(x => x.Path == path);
                    var lr = (LowRankResult)expected;
                    Assert.Equal(lr.Rank, m.Rank);
                    Assert.Equal(lr.Scale, m.Scale, 12);
                    Assert.Equal(lr.A, a.Weights.ReadSingles(m.A));
                    Assert.Equal(lr.B, a.Weights.ReadSingles(m.B));
                    break;
                }
                case "model":
                {
                    var w = StreamingFixture.Read(fx.Base, path + ".weight");
                    var got = StreamingFixture.Read(output, path + ".weight");
                    var delta = StreamingFixture.Dense(expected, dOut, dIn);
                    for (int i = 0; i < got.Length; i++)
                        Assert.True(Math.Abs(got[i] - (w[i] + delta[i])) <= 2e-6 * (Math.Abs(w[i]) + Math.Abs(delta[i])) + 1e-9,
                            $"{path}[{i}]: expected {w[i] + delta[i]}, got {got[i]}");
                    break;
                }
                default:
                {
                    var got = StreamingFixture.Read(output, path + ".weight");
                    var delta = StreamingFixture.Dense(expected, dOut, dIn);
                    for (int i = 0; i < got.Length; i++)
                        Assert.True(Math.Abs(got[i] - delta[i]) <= 2e-6 * Math.Abs(delta[i]) + 1e-9, $"{path}[{i}]: expected {delta[i]}, got {got[i]}");
                    break;
                }
            }
        }
    }

    [Theory]
    [InlineData("copa")]
    [InlineData("copa-official")]
    public void CopaAdapter_InTheInputsDtype_IsTheLibraryMergeRoundedOnce_BitForBit(string method)
    {
        // The default output dtype is the inputs' (BF16): copa then trims on the stored bits and writes
        // its factors already encoded; the bytes must be those of the F32 library merge rounded once.
        var output = fx.NewOutput($"{method}-bf16");
        var (code, _, err) = Merge(output, "--method", method);
        Assert.True(code == 0, err);
        var reference = fx.Reference(new MergeOptions { Method = method });
        using var a = LoraAdapter.Open(output);
        foreach (var (path, expected) in reference)
        {
            var m = a.Modules.Single(x => x.Path == path);
            var lr = (LowRankResult)expected;
            foreach (var (tensor, values) in new[] { (m.A, lr.A), (m.B, lr.B) })
            {
                Assert.Equal(DType.BF16, tensor.DType);
                var bytes = new byte[tensor.ByteLength];
                a.Weights.ReadBytes(tensor, 0, bytes);
                var want = new ushort[values.Length];
                CopaKernels.Formats.Numerics.FloatConversion.SingleToBf16(values, want);
                Assert.Equal(want, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes).ToArray());
            }
        }
    }

    private static (string, int, int) Dims(string path)
    {
        var p = StreamingFixture.Shape.Projections.Single(x => path.EndsWith(x.Module, StringComparison.Ordinal));
        return (path, p.DOut, p.DIn);
    }

    [Fact]
    public void ModelOutput_MirrorsTheBase_CopiesUntouchedTensorsByteForByte_RoundsOnce()
    {
        var output = fx.NewOutput("mirror");
        var (code, _, err) = Merge(output, "--method", "copa", "--output", "model", "--base", fx.Base);
        Assert.True(code == 0, err);
        using var b = ShardedModel.Open(fx.Base);
        using var o = ShardedModel.Open(output);
        Assert.Equal(b.Shards.Select(s => Path.GetFileName(s.Path)), o.Shards.Select(s => Path.GetFileName(s.Path)));
        Assert.Equal(b.Names.Order(), o.Names.Order());
        Assert.True(File.Exists(Path.Combine(output, "config.json")) && File.Exists(Path.Combine(output, "tokenizer.json")));
        var reference = fx.Reference(new MergeOptions { Method = "copa" });
        foreach (var name in b.Names)
        {
            b.TryGet(name, out var bf, out var bt);
            o.TryGet(name, out var of, out var ot);
            Assert.Equal(bt.DType, ot.DType);
            var bb = new byte[bt.ByteLength];
            var ob = new byte[ot.ByteLength];
            bf.ReadBytes(bt, 0, bb);
            of.ReadBytes(ot, 0, ob);
            var module = name[..^".weight".Length];
            if (!reference.TryGetValue(module, out var r))
            {
                Assert.Equal(bb, ob);
                continue;
            }
            // Targeted: W + ΔW computed in F32, rounded once to BF16 (within half a BF16 ulp of the exact sum).
            var w = bf.ReadSingles(bt);
            var got = of.ReadSingles(ot);
            var delta = StreamingFixture.Dense(r, (int)bt.Shape[0], (int)bt.Shape[1]);
            for (int i = 0; i < got.Length; i++)
            {
                double exact = w[i] + delta[i];
                Assert.True(Math.Abs(got[i] - exact) <= Math.Abs(exact) * (1.0 / 256) + 1e-30, $"{name}[{i}]: {got[i]} vs {exact}");
            }
            Assert.Contains("copa_merge", of.Metadata.Keys);
        }
    }

    [Fact]
    public void ModelOutput_ShardSize_ReShards_AndTheIndexIsAcceptedAsBase()
    {
        var output = fx.NewOutput("reshard");
        var index = Path.Combine(fx.Base, ShardedModel.IndexFileName);
        var (code, _, err) = Merge(output, "--method", "task-arithmetic", "--output", "model", "--base", index, "--shard-size", "20KB");
        Assert.True(code == 0, err);
        using var b = ShardedModel.Open(fx.Base);
        using var o = ShardedModel.Open(output);
        Assert.True(o.Shards.Count > b.Shards.Count, $"{o.Shards.Count} shards");
        Assert.All(o.Shards, s => Assert.Matches(@"^model-\d{5}-of-\d{5}\.safetensors$", Path.GetFileName(s.Path)));
        Assert.Equal(b.Names.Order(), o.Names.Order());
        foreach (var name in b.Names.Where(n => !n.Contains("_proj")))
        {
            b.TryGet(name, out var bf, out var bt);
            o.TryGet(name, out var of, out var ot);
            var x = new byte[bt.ByteLength];
            var y = new byte[ot.ByteLength];
            bf.ReadBytes(bt, 0, x);
            of.ReadBytes(ot, 0, y);
            Assert.Equal(x, y);
        }
    }

    [Fact]
    public void TiledPath_BaseTensorLargerThanTheBudget_StaysExact()
    {
        using var dir = new TempDir();
        // One 4096 × 4608 F32 weight (72 MiB) under a 64 MiB budget (the minimum): it can only pass in row tiles.
        var basePath = Path.Combine(dir.Path, "base");
        Directory.CreateDirectory(basePath);
        var big = new TensorSpec("model.layers.0.mlp.up_proj.weight", DType.F32, [4096, 4608]);
        var rng = new Random(5);
        var w = new float[4096 * 4608];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() - 0.5);
        using (var sw = new SafetensorsWriter(Path.Combine(basePath, "model.safetensors"), [big]))
        {
            sw.AppendSingles(big.Name, w);
            sw.Commit();
        }
        var adapters = Enumerable.Range(0, 2).Select(i =>
        {
            var a = Path.Combine(dir.Path, $"a{i}");
            Directory.CreateDirectory(a);
            var cfg = AdapterWriter.MakeConfig(8, 16, ["up_proj"], null);
            using var aw = new AdapterWriter(a, cfg, [new AdapterModuleSpec("model.layers.0.mlp.up_proj", 4096, 4608, 8)], DType.F32);
            foreach (var t in aw.Weights.Layout)
            {
                var v = new float[t.ElementCount];
                for (int k = 0; k < v.Length; k++) v[k] = (float)(rng.NextDouble() - 0.5) * 0.1f;
                aw.Weights.AppendSingles(t.Name, v);
            }
            aw.Commit();
            return a;
        }).ToList();
        var request = new MergeRequest
        {
            Options = new MergeOptions { Method = "copa" }, Adapters = adapters, Output = Path.Combine(dir.Path, "out"),
            Mode = OutputMode.Model, Base = basePath, MaxMemory = 64L << 20,
        };
        using (var plan = MergePlanner.Plan(request))
        {
            int rows = plan.TileRowsFor(plan.Modules[0]);
            Assert.InRange(rows, 1, 4095);
            Assert.True(plan.EstimatedPeakBytes <= request.MaxMemory, $"estimate {plan.EstimatedPeakBytes}");
            using var backend = new CopaKernels.Kernels.Cpu.CpuBackend();
            MergeRunner.Run(plan, backend);
        }
        var r = (LowRankResult)MergeMethods.Get("copa").MergeModule(new CopaKernels.Kernels.Cpu.CpuBackend(),
            AdapterModules.Load(adapters.Select(LoraAdapter.Open).ToList(), "model.layers.0.mlp.up_proj"), request.Options);
        var got = StreamingFixture.Read(request.Output, big.Name);
        for (int i = 0; i < got.Length; i += 997)
        {
            // Sampled check against a double-precision dot product (the whole reference would take seconds).
            int row = i / 4608, col = i % 4608;
            double d = 0, mag = 0;
            for (int k = 0; k < r.Rank; k++)
            {
                double t = (double)r.B[row * r.Rank + k] * r.A[k * 4608 + col] * r.Scale;
                d += t;
                mag += Math.Abs(t);
            }
            Assert.True(Math.Abs(got[i] - (w[i] + d)) <= 2e-6 * (Math.Abs(w[i]) + mag), $"[{i}] {got[i]} vs {w[i] + d}");
        }
    }

    [Theory]
    [InlineData("adapter", 3)]
    [InlineData("model", 20)]
    public void FailureMidWrite_LeavesNoOutput_AndInputsUntouched(string mode, int failAt)
    {
        var output = fx.NewOutput("fail");
        var before = StreamingFixture.Fingerprint(fx.Root + "/adapter1") + StreamingFixture.Fingerprint(fx.Base);
        int seen = 0;
        MergeRunner.BeforeTensor = _ => { if (++seen == failAt) throw new IOException("injected: disk full"); };
        try
        {
            var (code, _, err) = Merge(output, "--method", "copa", "--output", mode, "--base", fx.Base);
            Assert.Equal(1, code);
            Assert.Contains("injected: disk full", err);
            Assert.Single(err.Trim().Split('\n'));
        }
        finally { MergeRunner.BeforeTensor = null; }
        Assert.False(Directory.Exists(output));
        Assert.Empty(Directory.GetFileSystemEntries(Path.GetDirectoryName(output)!, ".*")); // no temporary folder or lock file
        Assert.Equal(before, StreamingFixture.Fingerprint(fx.Root + "/adapter1") + StreamingFixture.Fingerprint(fx.Base));
    }

    [Fact]
    public void Cancelled_LeavesNoOutput()
    {
        var output = fx.NewOutput("cancel");
        using var cts = new CancellationTokenSource();
        var request = new MergeRequest
        {
            Options = new MergeOptions { Method = "ties" }, Adapters = fx.Adapters, Output = output, Mode = OutputMode.Model, Base = fx.Base,
        };
        int seen = 0;
        MergeRunner.BeforeTensor = _ => { if (++seen == 10) cts.Cancel(); };
        try
        {
            using var plan = MergePlanner.Plan(request);
            using var backend = new CopaKernels.Kernels.Cpu.CpuBackend();
            Assert.ThrowsAny<OperationCanceledException>(() => MergeRunner.Run(plan, backend, null, 0, cts.Token));
        }
        finally { MergeRunner.BeforeTensor = null; }
        Assert.False(Directory.Exists(output));
        Assert.Empty(Directory.GetFileSystemEntries(Path.GetDirectoryName(output)!, ".*")); // no temporary folder or lock file
        Assert.Equal(130, CopaKernels.Cli.Program.Report(new OperationCanceledException(), new StringWriter()));
    }

    [Fact]
    public void ReRank_WritesRankN_WithAlphaN_AndReportsTheError()
    {
        var output = fx.NewOutput("rerank");
        var (code, _, err) = Merge(output, "--method", "copa", "--rank", "4", "--out-dtype", "f32");
        Assert.True(code == 0, err);
        using var a = LoraAdapter.Open(output);
        Assert.All(a.Modules, m => { Assert.Equal(4, m.Rank); Assert.Equal(1.0, m.Scale); });
        Assert.Equal(4, a.Config.R);
        var report = MergeReport.FromJson(File.ReadAllText(Path.Combine(output, MergeReport.FileName)));
        Assert.All(report.Modules, m => Assert.InRange(m.TruncationRelativeError!.Value, 0, 1));
    }

    [Fact]
    public void CopaOfficial_KeepsTheInputsRankAndAlpha()
    {
        var output = fx.NewOutput("official");
        var (code, _, err) = Merge(output, "--method", "copa-official");
        Assert.True(code == 0, err);
        using var a = LoraAdapter.Open(output);
        Assert.Equal(4, a.Config.R);
        Assert.Equal(8, a.Config.LoraAlpha);
        Assert.Empty(a.Config.RankPattern);
    }
}
