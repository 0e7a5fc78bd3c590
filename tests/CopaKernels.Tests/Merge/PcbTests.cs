using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;
using CopaKernels.Merge.Methods;

namespace CopaKernels.Tests.Merge;

public class PcbTests
{
    /// <summary>SEMANTICS §4 pcb in double, straight from the text.</summary>
    private static double[] Reference(IReadOnlyList<float[]> xs, double q, double lambda)
    {
        int n = xs.Count, d = xs[0].Length;
        double[] MinMax(double[] v)
        {
            double min = v.Min(), max = v.Max();
            return max > min ? v.Select(x => (x - min) / (max - min)).ToArray() : new double[v.Length];
        }
        var sum = new double[d];
        foreach (var x in xs) for (int i = 0; i < d; i++) sum[i] += x[i];
        var xc = new double[n][];
        var beta = new double[n][];
        for (int t = 0; t < n; t++)
        {
            var abs = xs[t].Select(v => (double)Math.Abs(v)).ToArray();
            var sorted = abs.OrderBy(v => v).ToArray();
            double lo = sorted[Math.Clamp((int)Math.Floor(d * 1e-4), 0, d - 1)];
            double hi = sorted[Math.Clamp((int)Math.Floor(d * (1 - 1e-4)) - 1, 0, d - 1)];
            var clippedAbs = abs.Select(v => Math.Min(Math.Max(v, lo), Math.Max(lo, hi))).ToArray();
            xc[t] = clippedAbs.Select((v, i) => Math.Sign(xs[t][i]) * v).ToArray();
            var mm = MinMax(clippedAbs);
            var p = mm.Select((v, i) => Math.Exp(n * v * v) * Math.Tanh(xs[t][i] * sum[i])).ToArray();
            double tau = p.OrderBy(v => v).ElementAt(Math.Clamp((int)Math.Floor(d * (1 - q)), 0, d - 1));
            beta[t] = MinMax(p.Select(v => v < tau ? 0 : v).ToArray());
        }
        var r = new double[d];
        for (int i = 0; i < d; i++)
        {
            double num = 0, den = 0;
            for (int t = 0; t < n; t++) { num += xc[t][i] * beta[t][i]; den += beta[t][i]; }
            r[i] = lambda * num / Math.Max(den, 1e-12);
        }
        return r;
    }

    [Theory]
    [InlineData(1, 2, 300, 0.1)]
    [InlineData(2, 3, 1027, 0.1)]
    [InlineData(3, 4, 20_011, 0.3)]
    [InlineData(4, 1, 64, 1.0)]
    public void Pcb_MatchesSpec(int seed, int tasks, int d, double q)
    {
        var rng = new Random(seed);
        var xs = Enumerable.Range(0, tasks).Select(_ => Enumerable.Range(0, d).Select(_ => (float)(rng.NextDouble() * 2 - 1) * 0.01f).ToArray()).ToList();
        var got = PcbMethod.Merge(xs, q, 1.5f, "m");
        var want = Reference(xs, q, 1.5);
        double maxAbs = want.Max(Math.Abs);
        for (int i = 0; i < d; i++)
            Assert.True(Math.Abs(want[i] - got[i]) <= 1e-4 * maxAbs + 1e-12, $"element {i}: expected {want[i]:G9}, got {got[i]:G9}");
    }

    [Fact]
    public void Pcb_ConstantTensors_GiveZerosNotNaN()
    {
        var xs = new List<float[]> { Enumerable.Repeat(0.5f, 10).ToArray(), Enumerable.Repeat(0.5f, 10).ToArray() };
        var got = PcbMethod.Merge(xs, 0.1, 1f, "m");
        Assert.All(got, v => Assert.False(float.IsNaN(v)));
        Assert.All(got, v => Assert.Equal(0f, v));
        var single = PcbMethod.Merge([new float[] { 3f }], 0.1, 1f, "m");
        Assert.False(float.IsNaN(single[0]));
    }

    [Fact]
    public void Pcb_ThroughTheMethod_FactorAndDeltaSpace()
    {
        using var backend = new CpuBackend();
        var m = MergeMethodTests.Module(31, 3, 16, 12);
        var factors = (LowRankResult)MergeMethods.Get("pcb").MergeModule(backend, m, new MergeOptions { Method = "pcb", Lambda = 2 });
        Assert.Equal(4, factors.Rank);
        Assert.Contains(factors.A, v => v != 0);
        var dense = (DenseResult)MergeMethods.Get("pcb").MergeModule(backend, m, new MergeOptions { Method = "pcb", Space = MergeSpace.Delta });
        var deltas = Enumerable.Range(0, 3).Select(t => CopaKernels.Merge.Routes.MergeRoute.For(backend).TaskDelta(m, t)).ToList();
        var want = Reference(deltas, 0.1, 1.0);
        double maxAbs = want.Max(Math.Abs);
        for (int i = 0; i < want.Length; i++)
            Assert.True(Math.Abs(want[i] - dense.Delta[i]) <= 1e-4 * maxAbs + 1e-12, $"element {i}");
    }
}
