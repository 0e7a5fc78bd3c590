using CopaKernels.Formats;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;
using CopaKernels.Merge.Methods;
using CopaKernels.Tests.Kernels;

namespace CopaKernels.Tests.Merge;

public class MergeMethodTests
{
    private static readonly CpuBackend Backend = new();

    /// <summary>Small random adapters: A uniform, B Gaussian (as the paper observes), scale α/r.</summary>
    internal static ModuleInput Module(int seed, int tasks, int dOut, int dIn, Func<int, int>? rankOf = null, bool ties = false)
    {
        var rng = new Random(seed);
        var list = new List<TaskFactors>();
        for (int t = 0; t < tasks; t++)
        {
            int r = rankOf?.Invoke(t) ?? 4;
            float Value(bool gaussian) => ties
                ? new[] { 0f, 0.5f, -0.5f, 1f, -1f }[rng.Next(5)]
                : gaussian ? (float)TestData.Gaussian(rng) * 0.1f : (float)(rng.NextDouble() * 2 - 1) * 0.05f;
            var a = new float[r * dIn];
            var b = new float[dOut * r];
            for (int i = 0; i < a.Length; i++) a[i] = Value(false);
            for (int i = 0; i < b.Length; i++) b[i] = Value(true);
            double alpha = 2 * r;
            list.Add(new TaskFactors(a, b, r, alpha / r, alpha));
        }
        return new ModuleInput("model.layers.0.self_attn.q_proj", dOut, dIn, list);
    }

    private static void Close(double[,] want, double[,] got, string label, double tol = 2e-5)
    {
        double norm = 0, err = 0, maxAbs = 0;
        foreach (var v in want) { norm += v * v; maxAbs = Math.Max(maxAbs, Math.Abs(v)); }
        int rows = want.GetLength(0), cols = want.GetLength(1);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
            {
                double d = want[i, j] - got[i, j];
                err += d * d;
                Assert.True(Math.Abs(d) <= tol * maxAbs + 1e-30,
                    $"{label}: element [{i},{j}] expected {want[i, j]:G9}, got {got[i, j]:G9}");
            }
        Assert.True(Math.Sqrt(err) <= tol * Math.Sqrt(norm) + 1e-30, $"{label}: relative Frobenius error {Math.Sqrt(err / Math.Max(norm, 1e-300)):G3}");
    }

    private static void Close(double[] want, float[] got, string label, double tol = 2e-5)
    {
        var w = new double[1, want.Length];
        var g = new double[1, got.Length];
        for (int i = 0; i < want.Length; i++) { w[0, i] = want[i]; g[0, i] = got[i]; }
        Close(w, g, label, tol);
    }

    [Theory]
    [InlineData(1, 1, 8, 16, 0.2, 2.0, 0.0)]
    [InlineData(2, 3, 24, 16, 0.2, 2.0, 0.0)]
    [InlineData(3, 4, 33, 31, 0.5, 1.0, 0.2)]
    [InlineData(4, 2, 7, 64, 1.0, 2.0, 0.0)]
    [InlineData(5, 5, 40, 17, 0.05, 3.0, 0.5)]
    public void Copa_MatchesSpec(int seed, int tasks, int dOut, int dIn, double density, double lambda, double clamp)
    {
        var m = Module(seed, tasks, dOut, dIn);
        var opts = new MergeOptions { Method = "copa", Density = density, Lambda = lambda, Clamp = clamp };
        var result = Assert.IsType<LowRankResult>(MergeMethods.Get("copa").MergeModule(Backend, m, opts));
        int total = m.Tasks.Sum(t => t.Rank);
        Assert.Equal(total, result.Rank);
        Assert.Equal(1.0, result.Scale);
        Close(MergeReference.Copa(m, density, lambda, clamp, true), MergeReference.Dense(result.B, result.A, dOut, total, dIn), $"copa seed {seed}");
        // The A factor is the stack of exact trims.
        var aT = m.Tasks.SelectMany(t => MergeReference.Trim(t.A, density)).ToArray();
        Assert.Equal(aT.Select(BitConverter.SingleToUInt32Bits), result.A.Select(BitConverter.SingleToUInt32Bits));
    }

    [Fact]
    public void Copa_WithTies_ZeroRowsAndUnequalRanksUnnormalised()
    {
        var m = Module(6, 3, 16, 12, ties: true);
        // A fully zero row in task 1: S = 1 and the event is counted.
        Array.Clear(m.Tasks[1].A, 0, 12);
        var r = MergeMethods.Get("copa").MergeModule(Backend, m, new MergeOptions { Method = "copa" });
        Assert.True(r.Stats.ZeroDenominatorRows >= 1);
        Close(MergeReference.Copa(m, 0.2, 2.0, 0, true), MergeReference.Dense(((LowRankResult)r).B, ((LowRankResult)r).A, 16, 12, 12), "copa ties");

        var uneven = Module(7, 3, 10, 9, rankOf: t => 2 + 2 * t);
        var e = Assert.Throws<TaskInputException>(() => MergeMethods.Get("copa").MergeModule(Backend, uneven, new MergeOptions { Method = "copa" }));
        Assert.Contains("ranks differ", e.Message);
        Assert.Equal(uneven.Path, e.Tensor);
        Assert.Equal(1, e.Task); // the first adapter whose rank is not the first's: the runner names its folder
        var lr = (LowRankResult)MergeMethods.Get("copa").MergeModule(Backend, uneven, new MergeOptions { Method = "copa", Normalize = false });
        Assert.Equal(12, lr.Rank);
        Close(MergeReference.Copa(uneven, 0.2, 2.0, 0, false), MergeReference.Dense(lr.B, lr.A, 10, 12, 9), "copa unnormalised");
    }

    [Fact]
    public void Copa_FullyPrunedRow_GetsScaleOne_AndIsCounted()
    {
        var m = Module(8, 2, 12, 16);
        // Row 2 of task 0 is non-zero but far below every other |x|: the trim removes all of it.
        for (int j = 0; j < 16; j++) m.Tasks[0].A[2 * 16 + j] = 1e-9f * (j + 1);
        var r = (LowRankResult)MergeMethods.Get("copa").MergeModule(Backend, m, new MergeOptions { Method = "copa" });
        Assert.Equal(1, r.Stats.ZeroDenominatorRows);
        Assert.All(r.A.AsSpan(2 * 16, 16).ToArray(), v => Assert.Equal(0f, v));
        Close(MergeReference.Copa(m, 0.2, 2.0, 0, true), MergeReference.Dense(r.B, r.A, 12, 8, 16), "copa fully pruned row");
    }

    [Theory]
    [InlineData(11, 2, 12, 20)]
    [InlineData(12, 4, 33, 17)]
    public void CopaOfficial_MatchesSpec(int seed, int tasks, int dOut, int dIn)
    {
        var m = Module(seed, tasks, dOut, dIn);
        var r = Assert.IsType<LowRankResult>(MergeMethods.Get("copa-official").MergeModule(Backend, m, new MergeOptions { Method = "copa-official" }));
        Assert.Equal(4, r.Rank);
        Assert.Equal(m.Tasks[0].Alpha, r.Alpha);
        Assert.Equal(m.Tasks[0].Scale, r.Scale);
        var (b, a) = MergeReference.CopaOfficial(m, 0.2, 2.0);
        Close(a, r.A, "A_m");
        Close(b, r.B, "B_m");
    }

    [Fact]
    public void CopaOfficial_HandWorkedExample()
    {
        // Worked through SEMANTICS §3 by hand with density 0.5 (see the comments for each step).
        // Task 1: |A1| sorted 0, .5, 1, 1, 2, 3 → k = 3, t = 1 → Ã1 = [[1,-2,3],[0,0,-1]]; S1 = [6/6, 1.5/1] = [1, 1.5].
        //         |B1| sorted 0, 1, 2, 4 → k = 2, t = 1 → B̃1 = B1.
        // Task 2: |A2| sorted 0, 0, .25, 1, 2, 2 → t = .25 → Ã2 = A2; S2 = [1, 1]. B̃2 = B2 (t = 1).
        // Clamp 0.2, r = 2: index floor(1.6) = 1 → S1 = [1.5, 1.5], S2 = [1, 1]; normalised 0.6 / 0.4.
        // λ = 2: A_m = 2(Ã1 + Ã2), B_m = 2(0.6 B̃1 + 0.4 B̃2).
        var m = new ModuleInput("m", 2, 3,
        [
            new TaskFactors([1, -2, 3, 0.5f, 0, -1], [2, 0, -1, 4], 2, 1.0, 2),
            new TaskFactors([0, 1, 0, 2, -2, 0.25f], [1, 1, 0, -3], 2, 1.0, 2),
        ]);
        var r = (LowRankResult)MergeMethods.Get("copa-official").MergeModule(Backend, m, new MergeOptions { Method = "copa-official", Density = 0.5 });
        Assert.Equal(new float[] { 2, -2, 6, 4, -4, -1.5f }, r.A);
        var wantB = new[] { 3.2, 0.8, -1.2, 2.4 };
        for (int i = 0; i < 4; i++) Assert.True(Math.Abs(wantB[i] - r.B[i]) < 1e-6, $"B_m[{i}] expected {wantB[i]}, got {r.B[i]}");
        Assert.Equal(1.0, r.Scale);
    }

    public static TheoryData<string, double, double, ulong> Baselines() => new()
    {
        { "task-arithmetic", 1.0, 1.0, 0 },
        { "ties", 0.2, 1.0, 0 },
        { "ties", 0.5, 0.7, 0 },
        { "dare", 0.3, 1.0, 17 },
        { "dare-ties", 0.5, 1.5, 3 },
        { "magnitude-prune", 0.2, 1.0, 0 },
    };

    [Theory]
    [MemberData(nameof(Baselines))]
    public void Baselines_FactorSpace_MatchSpec(string method, double density, double lambda, ulong seed)
    {
        var m = Module(21, 3, 24, 20);
        double[] w = [1.0, -0.5, 2.0];
        var opts = new MergeOptions { Method = method, Density = density, Lambda = lambda, Seed = seed, Weights = w, Space = MergeSpace.Factors };
        var r = Assert.IsType<LowRankResult>(MergeMethods.Get(method).MergeModule(Backend, m, opts));
        var xa = new List<float[]>();
        var xb = new List<float[]>();
        for (int t = 0; t < 3; t++)
        {
            double ws = w[t] * m.Tasks[t].Scale;
            float cb = (float)Math.Sqrt(Math.Abs(ws)), ca = Math.Sign(w[t]) * cb;
            xa.Add(m.Tasks[t].A.Select(v => ca * v).ToArray());
            xb.Add(m.Tasks[t].B.Select(v => cb * v).ToArray());
        }
        double[] ones = [1, 1, 1];
        Close(MergeReference.Baseline(method, xa, ones, density, 1.0, seed, m.Path + ".lora_A"), r.A, $"{method} A");
        Close(MergeReference.Baseline(method, xb, ones, density, lambda, seed, m.Path + ".lora_B"), r.B, $"{method} B");
    }

    [Theory]
    [MemberData(nameof(Baselines))]
    public void Baselines_DeltaSpace_MatchSpec(string method, double density, double lambda, ulong seed)
    {
        var m = Module(22, 3, 20, 18, rankOf: t => 2 + t);
        double[] w = [0.5, 1.0, -1.5];
        var opts = new MergeOptions { Method = method, Density = density, Lambda = lambda, Seed = seed, Weights = w, Space = MergeSpace.Delta };
        var result = MergeMethods.Get(method).MergeModule(Backend, m, opts);
        float[] merged;
        if (method == "task-arithmetic")
        {
            // A sum of products stays an exact low-rank pair of rank Σ r_n.
            var lr = Assert.IsType<LowRankResult>(result);
            Assert.Equal(2 + 3 + 4, lr.Rank);
            var dense = MergeReference.Dense(lr.B, lr.A, 20, lr.Rank, 18);
            merged = new float[20 * 18];
            for (int i = 0; i < merged.Length; i++) merged[i] = (float)dense[i / 18, i % 18];
        }
        else merged = Assert.IsType<DenseResult>(result).Delta;
        var deltas = Enumerable.Range(0, 3).Select(t => CopaKernels.Merge.Routes.MergeRoute.For(Backend).TaskDelta(m, t)).ToList();
        // The kernel's ΔW_n against the dense product in double.
        for (int t = 0; t < 3; t++)
        {
            var want = MergeReference.Dense(m.Tasks[t].B, m.Tasks[t].A, 20, m.Tasks[t].Rank, 18, m.Tasks[t].Scale);
            var got = new double[20, 18];
            for (int i = 0; i < 20 * 18; i++) got[i / 18, i % 18] = deltas[t][i];
            Close(want, got, $"ΔW_{t}", 1e-6);
        }
        Close(MergeReference.Baseline(method, deltas, w, density, lambda, seed, m.Path), merged, $"{method} delta");
    }

    [Fact]
    public void Dare_SameSeed_SameResult_DifferentSeed_Differs()
    {
        var m = Module(23, 2, 16, 16);
        ModuleResult Run(ulong seed) => MergeMethods.Get("dare").MergeModule(Backend, m, new MergeOptions { Method = "dare", Density = 0.5, Seed = seed });
        var a = (LowRankResult)Run(5);
        var b = (LowRankResult)Run(5);
        var c = (LowRankResult)Run(6);
        Assert.Equal(a.A, b.A);
        Assert.NotEqual(a.A, c.A);
    }

    [Fact]
    public void FactorSpace_NeedsEqualRanks_AndOptionsAreValidated()
    {
        var m = Module(24, 2, 8, 8, rankOf: t => 2 + t);
        var e = Assert.Throws<TaskInputException>(() => MergeMethods.Get("ties").MergeModule(Backend, m, new MergeOptions { Method = "ties" }));
        Assert.Contains("space delta", e.Message);
        void Refused(MergeOptions o, string parameter, string fragment)
        {
            var e = Assert.Throws<ParameterException>(() => o.Validate(2));
            Assert.Equal(parameter, e.Parameter);
            Assert.Contains(fragment, e.Message);
        }
        Refused(new MergeOptions { Method = "ties", Density = 0 }, "density", "density 0 must be in (0, 1]");
        Refused(new MergeOptions { Method = "ties", Density = 1.5 }, "density", "density 1.5");
        Refused(new MergeOptions { Method = "copa", Clamp = 1 }, "clamp", "clamp 1 must be in [0, 1)");
        Refused(new MergeOptions { Method = "copa-official", Clamp = 0.3 }, "clamp", "copa-official fixes clamp at 0.2");
        Refused(new MergeOptions { Method = "copa-official", Normalize = false }, "normalize", "always normalises");
        Refused(new MergeOptions { Method = "ties", Weights = [1.0] }, "weight", "1 weights for 2 adapters");
        Refused(new MergeOptions { Method = "nope" }, "method", "unknown method 'nope'");
        // A parameter the method does not read would do nothing: refused, naming the method and the flag.
        Refused(new MergeOptions { Method = "copa", Weights = [0.0, 0.0] }, "weight", "method copa does not use `weight`");
        Refused(new MergeOptions { Method = "ties", Clamp = 0.1 }, "clamp", "method ties does not use `clamp` (it applies to copa, copa-official)");
        Refused(new MergeOptions { Method = "ties", Seed = 1 }, "seed", "method ties does not use `seed` (it applies to dare, dare-ties)");
        Refused(new MergeOptions { Method = "task-arithmetic", Density = 0.5 }, "density", "method task-arithmetic does not use `density`");
        Refused(new MergeOptions { Method = "pcb", Density = 0.5 }, "density", "method pcb does not use `density`");
        Refused(new MergeOptions { Method = "copa", Space = MergeSpace.Factors }, "space", "method copa does not use `space`");
        Refused(new MergeOptions { Method = "dare", PcbRatio = 0.2 }, "pcb-ratio", "method dare does not use `pcb-ratio` (it applies to pcb)");
        Refused(new MergeOptions { Method = "ties", Normalize = true }, "normalize", "method ties does not use `normalize`");
        new MergeOptions { Method = "copa", Density = 1, Clamp = 0.2, Normalize = false, Lambda = 3 }.Validate(2);
        new MergeOptions { Method = "copa-official", Clamp = 0.2, Normalize = true }.Validate(2);
        new MergeOptions { Method = "dare-ties", Density = 0.5, Seed = 4, Space = MergeSpace.Delta, Weights = [1.0, 2.0] }.Validate(2);
        new MergeOptions { Method = "pcb", PcbRatio = 0.2, Lambda = 1.5, Weights = [1.0, 2.0] }.Validate(2);
    }

    [Fact]
    public void NaNInAFactor_IsAnInputErrorNamingTheModule()
    {
        var m = Module(25, 2, 8, 8);
        m.Tasks[1].B[3] = float.NaN;
        foreach (var method in new[] { "copa", "ties", "dare", "magnitude-prune", "pcb" })
            foreach (var space in new MergeSpace?[] { null, MergeSpace.Delta })
            {
                if (space != null && !MergeMethods.Get(method).Parameters.Space) continue;
                var e = Assert.Throws<TaskInputException>(() => MergeMethods.Get(method).MergeModule(Backend, m, new MergeOptions { Method = method, Space = space }));
                Assert.Equal(m.Path, e.Tensor);
                Assert.Equal("adapter 2 holds NaN or Inf in this module", e.Reason);
                Assert.True(e.Task == 1 && e.Values, $"{method} {space}: task {e.Task}, values {e.Values}");
            }
    }

    [Fact]
    public void Overflow_OfADerivedValue_IsNotBlamedOnTheInput()
    {
        // Finite factors whose scale (lora_alpha / r = 1.25e39) overflows F32 once applied: the delta-space
        // trims and the factor-space weighting must say so, not that the adapter holds NaN or Inf.
        var m = Module(27, 3, 8, 8);
        var huge = m with { Tasks = m.Tasks.Select((t, i) => i == 1 ? t with { Scale = 1.25e39 } : t).ToList() };
        foreach (var (method, space) in new[] { ("ties", MergeSpace.Delta), ("dare", MergeSpace.Delta), ("pcb", MergeSpace.Delta), ("magnitude-prune", MergeSpace.Delta) })
        {
            var e = Assert.Throws<TaskInputException>(() => MergeMethods.Get(method).MergeModule(Backend, huge, new MergeOptions { Method = method, Space = space }));
            Assert.True(e.Task == 1 && !e.Values, $"{method}: task {e.Task}, values {e.Values}");
            Assert.Contains("of adapter 2 overflows F32", e.Reason);
            Assert.Contains("LoRA scale 1.25e+39", e.Reason);
            Assert.DoesNotContain("holds NaN", e.Reason);
        }
        // A weight of 1e300 in factor space: √|w·s| is Inf in fp32.
        var w = Assert.Throws<TaskInputException>(() => MergeMethods.Get("ties").MergeModule(Backend, m,
            new MergeOptions { Method = "ties", Weights = [1, 1e300, 1] }));
        Assert.True(w.Task == 1 && !w.Values);
        Assert.Contains("weight 1e+300", w.Reason);
    }

    [Fact]
    public void NaNInSeveralFactors_NamesTheFirstAdapterWithABadA_ThenB()
    {
        // The CPU path trims every factor in parallel; it must name the same adapter as a device does
        // (A's are selected first there): the first adapter whose A is bad, else the first with a bad B.
        var m = Module(26, 3, 8, 8);
        m.Tasks[0].B[1] = float.NaN;
        m.Tasks[2].A[5] = float.PositiveInfinity;
        var e = Assert.Throws<TaskInputException>(() => MergeMethods.Get("copa").MergeModule(Backend, m, new MergeOptions { Method = "copa" }));
        Assert.Contains("adapter 3", e.Message);
        m.Tasks[2].A[5] = 0;
        e = Assert.Throws<TaskInputException>(() => MergeMethods.Get("copa-official").MergeModule(Backend, m, new MergeOptions { Method = "copa-official" }));
        Assert.Contains("adapter 1", e.Message);
    }

    [Theory]
    [InlineData("copa")]
    [InlineData("copa-official")]
    public void CallersFactors_AreNotModified_TheFeedsAreTrimmedInPlace(string method)
    {
        var m = Module(27, 3, 24, 40);
        var before = m.Tasks.Select(t => (A: (float[])t.A.Clone(), B: (float[])t.B.Clone())).ToList();
        var opts = new MergeOptions { Method = method };
        var want = (LowRankResult)MergeMethods.Get(method).MergeModule(Backend, m, opts);
        for (int t = 0; t < m.Tasks.Count; t++)
        {
            Assert.Equal(before[t].A, m.Tasks[t].A);
            Assert.Equal(before[t].B, m.Tasks[t].B);
        }
        // A transient module (the streaming feed's own arrays) gives the same result, trimming in place.
        var transient = m with { Factors = CopaKernels.Merge.Factors.FactorSet.OwnArrays(m.Tasks.Count) };
        var got = (LowRankResult)MergeMethods.Get(method).MergeModule(Backend, transient, opts);
        Assert.Equal(want.A, got.A);
        Assert.Equal(want.B, got.B);
        Assert.Equal(want.Stats.ThresholdsA, got.Stats.ThresholdsA);
        Assert.Contains(m.Tasks[0].A, v => v == 0);
    }

    [Theory]
    [InlineData("ties")]
    [InlineData("task-arithmetic")]
    [InlineData("magnitude-prune")]
    public void Combine_VectorLanes_AreTheScalarDefinitionBitForBit(string method)
    {
        var m = (ArithmeticMethod)MergeMethods.Get(method);
        var rng = new Random(5);
        int len = (1 << 14) * 2 + 13; // two blocks and a scalar tail
        var xs = Enumerable.Range(0, 4).Select(_ => Enumerable.Range(0, len).Select(_ => rng.Next(6) switch
        {
            0 => 0f,
            1 => -0f,
            2 => 0.5f,
            3 => -0.5f,
            _ => (float)TestData.Gaussian(rng),
        }).ToArray()).ToArray();
        double[] w = [1.0, -0.5, 2.0, 0.3];
        var got = m.Combine(xs, w, 1.7, new ParallelOptions { MaxDegreeOfParallelism = 2 });
        var wf = w.Select(x => (float)x).ToArray();
        for (int i = 0; i < len; i++)
        {
            float want = m.CombineOne(xs, wf, 1.7f, i);
            Assert.True(BitConverter.SingleToUInt32Bits(want) == BitConverter.SingleToUInt32Bits(got[i]), $"element {i}: expected {want:G9}, got {got[i]:G9}");
        }
    }
}
