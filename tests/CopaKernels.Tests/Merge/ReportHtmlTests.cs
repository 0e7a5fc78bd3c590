using System.Text.RegularExpressions;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;
using CopaKernels.Merge.Linalg;
using CopaKernels.Merge.Reporting;
using CopaKernels.Merge.Streaming;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// <c>merge_report.html</c> and the report data behind it: the page is self-contained and redrawn from the JSON
/// alone byte for byte; the spectra are the exact singular values; the throughput ends where the output does;
/// the per-task trims and CoPA's scales are in the JSON.
/// </summary>
public sealed class ReportHtmlTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    private MergeReport Merge(string method, string output, OutputMode mode = OutputMode.Adapter, bool html = true,
        SpectraSelection spectra = SpectraSelection.All, int? rank = null, MergeSpace? space = null)
    {
        using var job = MergeJob.Plan(new MergeRequest
        {
            Options = new MergeOptions { Method = method, Space = space },
            Adapters = fx.Adapters,
            Output = output,
            Mode = mode,
            Base = mode == OutputMode.Model ? fx.Base : null,
            HtmlReport = html,
            ReportSpectra = spectra,
            Rank = rank,
        });
        using var backend = new CpuBackend(threads: 2);
        return job.Run(backend);
    }

    [Theory]
    [InlineData("copa", OutputMode.Adapter)]
    [InlineData("copa-official", OutputMode.Model)]
    [InlineData("ties", OutputMode.Delta)]
    [InlineData("dare", OutputMode.Adapter)]
    public void Page_IsSelfContained_AndRedrawnFromTheJsonByteForByte(string method, OutputMode mode)
    {
        var output = fx.NewOutput(method);
        Merge(method, output, mode);
        var html = File.ReadAllText(Path.Combine(output, MergeReportHtml.FileName));
        var json = File.ReadAllText(Path.Combine(output, MergeReport.FileName));
        Assert.Equal(html, MergeReportHtml.Render(MergeReport.FromJson(json)));

        Assert.StartsWith("<!DOCTYPE html>", html);
        Assert.Contains("default-src 'none'", html);                    // the browser may fetch nothing
        Assert.DoesNotContain("<script", html, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotMatch(new Regex(@"\b(src|href)\s*=|url\(|@import|https?://", RegexOptions.IgnoreCase), html);
        Assert.Contains("<h2>Summary</h2>", html);
        Assert.Contains("<h2>Throughput over time</h2>", html);
        Assert.Contains("<h2>Singular-value spectra</h2>", html);
        Assert.Equal(method != "copa-official" || true, html.Contains("<h2>What the trims kept, per layer and module</h2>"));
        Assert.Equal(method.StartsWith("copa"), html.Contains("<h2>CoPA&#39;s complementary scales S</h2>"));
        Assert.True(Regex.Matches(html, "<svg ").Count >= 5);
    }

    [Fact]
    public void NoHtmlReport_WritesTheJsonOnly()
    {
        var output = fx.NewOutput("nohtml");
        Merge("copa", output, html: false);
        Assert.True(File.Exists(Path.Combine(output, MergeReport.FileName)));
        Assert.False(File.Exists(Path.Combine(output, MergeReportHtml.FileName)));
    }

    [Theory]
    [InlineData(OutputMode.Adapter)]
    [InlineData(OutputMode.Model)]
    public void Spectra_AreTheSingularValuesOfTheDenseUpdates(OutputMode mode)
    {
        var output = fx.NewOutput("spectra");
        var report = Merge("copa", output, mode);
        Assert.Equal(report.Modules.Count, report.Spectra!.Count);
        var adapterOutput = fx.NewOutput("spectra-adapter");
        var asAdapter = mode == OutputMode.Adapter ? report : Merge("copa", adapterOutput);
        using var merged = LoraAdapter.Open(mode == OutputMode.Adapter ? output : adapterOutput);
        var adapters = fx.Adapters.Select(LoraAdapter.Open).ToList();
        try
        {
            foreach (var sp in report.Spectra)
            {
                for (int t = 0; t < sp.Tasks.Count; t++)
                {
                    Assert.True(adapters[sp.Adapters[t]].TryGetModule(sp.Path, out var lm));
                    Near(DenseSingularValues(adapters[sp.Adapters[t]], lm!), sp.Tasks[t], $"{sp.Path} task {t}", 1e-9);
                }
                // Adapter output: read back from the written factors. Model output: from a copy of the merged
                // factors before they were stored, so within the written adapter's rounding of them.
                Assert.True(merged.TryGetModule(sp.Path, out var mm));
                Near(DenseSingularValues(merged, mm!), sp.Merged!, $"{sp.Path} merged", mode == OutputMode.Adapter ? 1e-9 : 1e-2);
            }
        }
        finally
        {
            foreach (var a in adapters) a.Dispose();
        }
    }

    private sealed class SequenceOfSequences : IEqualityComparer<IReadOnlyList<double>?>
    {
        public bool Equals(IReadOnlyList<double>? x, IReadOnlyList<double>? y) => x is null ? y is null : y is not null && x.SequenceEqual(y);
        public int GetHashCode(IReadOnlyList<double>? obj) => 0;
    }

    /// <summary>σ of scale·B·A formed densely in double and decomposed whole: an independent reference.</summary>
    private static double[] DenseSingularValues(LoraAdapter adapter, LoraModule m)
    {
        var a = adapter.Weights.ReadSingles(m.A);
        var b = adapter.Weights.ReadSingles(m.B);
        int rows = b.Length / m.Rank, cols = a.Length / m.Rank;
        var w = new double[rows * cols];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
            {
                double s = 0;
                for (int k = 0; k < m.Rank; k++) s += (double)b[i * m.Rank + k] * a[k * cols + j];
                w[i * cols + j] = s * m.Scale;
            }
        var svd = JacobiSvd.Decompose(w, rows, cols);
        return svd.S.Take(svd.Count).ToArray();
    }

    private static void Near(double[] want, IReadOnlyList<double> got, string label, double tolerance)
    {
        for (int i = 0; i < got.Count; i++)
        {
            double w = i < want.Length ? want[i] : 0;
            Assert.True(Math.Abs(w - got[i]) <= tolerance * Math.Max(1, want[0]), $"{label}: σ_{i} = {got[i]:R}, dense {w:R}");
        }
    }

    [Theory]
    [InlineData(OutputMode.Adapter)]
    [InlineData(OutputMode.Model)]
    public void Spectra_ReadsAreNotTheMerges(OutputMode mode)
    {
        // The tasks' spectra are read through handles of their own while the stream runs: the bytes read that
        // the report gives are the merge's alone, the same as without spectra.
        var none = Merge("copa", fx.NewOutput($"reads-none-{mode}"), mode, spectra: SpectraSelection.None);
        var all = Merge("copa", fx.NewOutput($"reads-all-{mode}"), mode, spectra: SpectraSelection.All);
        Assert.Equal(none.Throughput!.Samples[^1].Read, all.Throughput!.Samples[^1].Read);
        Assert.Equal(all.Modules.Count, all.Spectra!.Count);
        Assert.All(all.Spectra, sp => Assert.True(sp.Tasks.Count == sp.Adapters.Count && sp.Tasks.All(t => t.Count > 0) && sp.Merged is { Count: > 0 }));
    }

    [Theory]
    [InlineData(3000, 20, 5000, DType.F32)]   // B over three row blocks, A over two reads of four column blocks
    [InlineData(700, 128, 1100, DType.BF16)]  // the merged rank of 8 rank-16 tasks; A's last read is short
    [InlineData(40, 5, 9, DType.F16)]
    public void Spectra_FromAFile_BlockByBlock_EqualTheSpectraInMemory(int dOut, int rank, int dIn, DType dtype)
    {
        // The file path never holds a factor whole; its Gram blocks are the in-memory path's, value for value.
        var rng = new Random(dOut + rank + dIn);
        var b = Enumerable.Range(0, dOut * rank).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var a = Enumerable.Range(0, rank * dIn).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.01f).ToArray();
        string path = Path.Combine(fx.NewOutput($"gram-{dtype}"), "factors.safetensors");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using (var w = new SafetensorsWriter(path, [new TensorSpec("b", dtype, [dOut, rank]), new TensorSpec("a", dtype, [rank, dIn])]))
        {
            foreach (var t in w.Layout) w.AppendSingles(t.Name, t.Name == "b" ? b : a);
            w.Commit();
        }
        using var file = SafetensorsFile.Open(path);
        var (tb, ta) = (file.Get("b"), file.Get("a"));
        var want = LowRankTruncation.SingularValues(file.ReadSingles(tb), file.ReadSingles(ta), dOut, rank, dIn);
        var got = ModuleSpectra.FromFile(file, tb, ta, rank, -2.0);
        Assert.Equal(want.Select(x => 2 * x), got);
    }

    [Fact]
    public async Task Spectra_DoNotWaitForAStarvedBackgroundThread()
    {
        // On a machine whose cores other work keeps busy, the idle-priority thread may not run at all: the
        // merge must finish without it, every spectrum taken at the end. Here it blocks in the first module it
        // takes (or, starved for real by the tests beside this one, never gets to one).
        using var release = new ManualResetEventSlim();
        int entered = 0;
        ModuleSpectra.BeforeEarlyModule = () => { Interlocked.Increment(ref entered); release.Wait(); };
        try
        {
            var report = await Task.Run(() => Merge("copa", fx.NewOutput("starved"), spectra: SpectraSelection.All))
                .WaitAsync(TimeSpan.FromSeconds(60));
            Assert.Equal(report.Modules.Count, report.Spectra!.Count);
            Assert.All(report.Spectra, sp => Assert.True(sp.Tasks.Count == sp.Adapters.Count && sp.Tasks.All(t => t.Count > 0)));
            Assert.InRange(Volatile.Read(ref entered), 0, 1);
        }
        finally
        {
            ModuleSpectra.BeforeEarlyModule = null;
            release.Set();
        }
    }

    [Fact]
    public void Throughput_EndsWithEveryOutputByteComputedAndWritten()
    {
        foreach (var mode in new[] { OutputMode.Adapter, OutputMode.Model })
        {
            var report = Merge("copa", fx.NewOutput($"timeline-{mode}"), mode, spectra: SpectraSelection.None);
            var last = report.Throughput!.Samples[^1];
            Assert.Equal(report.Output.DataBytes, last.Written);
            Assert.Equal(report.Output.DataBytes, last.Computed);
            Assert.True(last.Read > 0);
            Assert.True(report.Throughput.Samples.Count >= 2);
            Assert.True(report.Throughput.Samples.Zip(report.Throughput.Samples.Skip(1)).All(p => p.First.Seconds <= p.Second.Seconds
                && p.First.Read <= p.Second.Read && p.First.Written <= p.Second.Written));
            Assert.Null(report.Spectra);
            Assert.True(report.TimingsSeconds.ContainsKey("read") && report.TimingsSeconds.ContainsKey("write"));
        }
    }

    [Fact]
    public void PerTaskTrims_Scales_AndEnergy_AreReported()
    {
        var copa = Merge("copa", fx.NewOutput("stats"), rank: 2);
        foreach (var m in copa.Modules)
        {
            Assert.Equal(fx.Adapters.Count, m.KeptFractionA!.Count);
            Assert.Equal(fx.Adapters.Count, m.KeptFractionB!.Count);
            Assert.All(m.KeptFractionA, f => Assert.InRange(f, 0.2, 0.3));    // density 0.2 keeps ≥ 20 % (ties kept)
            Assert.All(m.Scales!, s => Assert.True(s.Min <= s.Median && s.Median <= s.Max && s.Min >= 1));
            Assert.Equal(m.ZeroDenominatorRows, m.Scales!.Sum(s => s.FallbackRows));
            Assert.Equal(1 - m.TruncationRelativeError!.Value * m.TruncationRelativeError.Value, m.EnergyKept!.Value, 12);
        }
        var arithmetic = Merge("task-arithmetic", fx.NewOutput("ta"));
        Assert.All(arithmetic.Modules, m => Assert.True(m.KeptFractionA == null && m.Scales == null && m.EnergyKept == null));
        var ties = Merge("ties", fx.NewOutput("ties-delta"), OutputMode.Delta, space: MergeSpace.Delta);
        Assert.All(ties.Modules, m => Assert.True(m.Dense && m.KeptFractionA!.Count == fx.Adapters.Count && m.KeptFractionB == null));
        Assert.All(ties.Spectra!, s => Assert.True(s.Merged == null && s.Note != null));
    }

    [Fact]
    public void FewSpectra_TakeTheFirstMiddleAndLastLayerOfEachType()
    {
        var paths = Enumerable.Range(0, 32).SelectMany(l => new[] { $"model.layers.{l}.self_attn.q_proj", $"model.layers.{l}.mlp.down_proj" })
            .Append("lm_head").Append("model.mm_projector.0").Append("model.mm_projector.2").ToList();
        var few = ModuleSpectra.Choose(paths, SpectraSelection.Few);
        Assert.Equal(["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.16.self_attn.q_proj",
            "model.layers.16.mlp.down_proj", "model.layers.31.self_attn.q_proj", "model.layers.31.mlp.down_proj", "lm_head",
            "model.mm_projector.0", "model.mm_projector.2"], few);
        // Fewer than three layers: each once.
        Assert.Equal(["model.layers.3.mlp.up_proj", "model.layers.9.mlp.up_proj"],
            ModuleSpectra.Choose(["model.layers.3.mlp.up_proj", "model.layers.9.mlp.up_proj"], SpectraSelection.Few));
        Assert.Equal(paths, ModuleSpectra.Choose(paths, SpectraSelection.All));
        Assert.Empty(ModuleSpectra.Choose(paths, SpectraSelection.None));
        Assert.Equal(7, ModuleSpectra.LayerOf("base_model.model.model.layers.7.mlp.up_proj"));
        Assert.Null(ModuleSpectra.LayerOf("lm_head"));
    }

    [Fact]
    public void ZeroUpdates_AndEmptySeries_Render()
    {
        // A freshly initialised LoRA has B = 0: every σ is 0, nothing to draw on a log axis.
        var page = Svg.Lines("zeros", "i", "σ", [new Svg.Series("a", "#000", [(1, 0), (2, 0)]), new Svg.Series("b", "#111", [])], logY: true);
        Assert.Contains("<svg", page);
        var empty = Svg.Heatmap("none", ["0"], ["q"], new double[,] { { double.NaN } }, v => v.ToString(), log: true);
        Assert.Contains("<svg", empty);
        Assert.Contains("<svg", Svg.Bars("none", []));
    }

    [Theory]
    [InlineData(SpectraSelection.Few, 2_000_000)]
    [InlineData(SpectraSelection.All, 3_000_000)]
    public void PageFor32Layers7Targets8Tasks_StaysSmall(SpectraSelection selection, int limit)
    {
        string[] types = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
        var rng = new Random(3);
        double[] Values(int n) => Enumerable.Range(0, n).Select(_ => rng.NextDouble()).OrderDescending().ToArray();
        var modules = new List<MergeReport.ModuleReport>();
        var spectra = new List<MergeReport.ModuleSpectrum>();
        for (int l = 0; l < 32; l++)
            foreach (var t in types)
            {
                var path = $"model.layers.{l}.{(t.EndsWith("_proj") && t.Length == 6 ? "self_attn" : "mlp")}.{t}";
                modules.Add(new MergeReport.ModuleReport(path, 4096, 4096, Enumerable.Repeat(16, 8).ToList(), 128, false,
                    Enumerable.Range(0, 8).Select(_ => (float)rng.NextDouble()).ToList(), Enumerable.Range(0, 8).Select(_ => (float)rng.NextDouble()).ToList(),
                    1, 2, 0, 0.1, 0.01, null, Values(8), Values(8), Enumerable.Range(0, 8).Select(_ => new ScaleSummary(1, 2, 3, 0)).ToList(), 0.99));
                spectra.Add(new MergeReport.ModuleSpectrum(path, Enumerable.Range(0, 8).ToList(), Enumerable.Range(0, 8).Select(_ => (IReadOnlyList<double>)Values(16)).ToList(), Values(128)));
            }
        var report = new MergeReport
        {
            Tool = "copa 1.0.0", FinishedUtc = DateTime.UnixEpoch, Method = "copa",
            Parameters = new SortedDictionary<string, object?>(StringComparer.Ordinal) { ["density"] = 0.2 },
            Adapters = Enumerable.Range(0, 8).Select(i => new MergeReport.InputFile($"/a/{i}/adapter_model.safetensors", 1)).ToList(),
            Output = new MergeReport.OutputInfo("/out", "adapter", "BF16", 1, 448, 128), Device = "cpu",
            TimingsSeconds = new SortedDictionary<string, double>(StringComparer.Ordinal) { ["plan"] = 0.1 },
            Memory = new MergeReport.MemoryInfo(1, 1, 1, 0, true), Summary = new MergeReport.Totals(224, 1, 2, 0, 0.1),
            Modules = modules, Spectra = spectra.Where(sp => ModuleSpectra.Choose(modules.Select(m => m.Path).ToList(), selection).Contains(sp.Path)).ToList(),
            Throughput = new MergeReport.Timeline(0.02, Enumerable.Range(0, MergeTimeline.MaxSamples).Select(i => new MergeReport.TimelineSample(i * 0.02, i * 100L, i * 90L, i * 80L)).ToList()),
        };
        var html = MergeReportHtml.Render(report);
        Assert.InRange(System.Text.Encoding.UTF8.GetByteCount(html), 100_000, limit);
    }
}
