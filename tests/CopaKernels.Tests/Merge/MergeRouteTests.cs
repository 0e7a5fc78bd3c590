using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;
using CopaKernels.Merge.Factors;
using CopaKernels.Merge.Routes;
using CopaKernels.Tests.Formats;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// The two routes are two ways to the same numbers: the device route run over the CPU backend's buffer
/// API (packed tensors, batched selection, the row-sum kernel) must give the host route's results bit for
/// bit, and the host route's 16-bit fast paths (factors read where they are trimmed, kept as BF16/F16,
/// encoded straight into the output's bytes) must give the bytes of the general F32 path, encoded.
/// </summary>
public class MergeRouteTests
{
    private static readonly CpuBackend Cpu = new(2);

    [Fact]
    public void RouteFor_TheCpuBackend_IsTheHostRoute()
    {
        Assert.IsType<HostRoute>(MergeRoute.For(Cpu));
        Assert.Same(Cpu, MergeRoute.For(Cpu).Backend);
        Assert.Equal(Cpu.Threads, MergeRoute.For(Cpu).Parallel.MaxDegreeOfParallelism);
    }

    public static TheoryData<string, MergeSpace> Methods()
    {
        var d = new TheoryData<string, MergeSpace>();
        foreach (var m in MergeMethods.Names)
            foreach (var space in new[] { MergeSpace.Factors, MergeSpace.Delta })
                d.Add(m, space);
        return d;
    }

    [Theory]
    [MemberData(nameof(Methods))]
    public void HostAndDeviceRoutes_GiveTheSameBits(string method, MergeSpace space)
    {
        var module = MergeMethodTests.Module(41, 3, 45, 33, ties: method == "ties");
        var declared = MergeMethods.Get(method).Parameters;
        var opts = new MergeOptions
        {
            Method = method,
            Space = declared.Space ? space : null,
            Density = declared.Density != null ? 0.3 : null,
            Seed = declared.Seed ? 5UL : null,
            Weights = declared.Weights ? [1.0, -0.5, 2.0] : null,
        };
        var host = MergeMethods.Get(method).MergeModule(MergeRoute.For(Cpu), module, opts);
        var device = MergeMethods.Get(method).MergeModule(new DeviceRoute(Cpu, ResultSink.FreshArrays), module, opts);
        Assert.Equal(host.GetType(), device.GetType());
        Assert.Equal(host.Stats.ThresholdsA, device.Stats.ThresholdsA);
        Assert.Equal(host.Stats.ThresholdsB, device.Stats.ThresholdsB);
        Assert.Equal((host.Stats.Kept, host.Stats.Total, host.Stats.ZeroDenominatorRows),
            (device.Stats.Kept, device.Stats.Total, device.Stats.ZeroDenominatorRows));
        if (host is LowRankResult h)
        {
            var d = (LowRankResult)device;
            Assert.Equal((h.Rank, h.Scale, h.Alpha), (d.Rank, d.Scale, d.Alpha));
            Assert.Equal(h.A, d.A);
            Assert.Equal(h.B, d.B);
        }
        else Assert.Equal(((DenseResult)host).Delta, ((DenseResult)device).Delta);
    }

    [Theory]
    [InlineData("copa", "BF16")]
    [InlineData("copa", "F16")]
    [InlineData("copa-official", "BF16")]
    [InlineData("copa-official", "F16")]
    public void HostRoute_On16BitFactorsInFiles_WritesTheGeneralPathsBytes(string method, string dtypeName)
    {
        var dtype = Enum.Parse<DType>(dtypeName);
        using var dir = new TempDir();
        var adapters = Enumerable.Range(0, 3)
            .Select(i => LoraAdapter.Open(TestAdapters.Write(Path.Combine(dir.Path, $"a{i}"), r: 16, alpha: 32, dtype: dtype, seed: 20 + i)))
            .ToList();
        try
        {
            var opts = new MergeOptions { Method = method };
            foreach (var path in AdapterModules.Plan(adapters))
            {
                // The general path: every factor read as F32 first, the device route's steps, F32 results.
                var eager = AdapterModules.Load(adapters, path);
                var want = (LowRankResult)MergeMethods.Get(method).MergeModule(new DeviceRoute(Cpu, ResultSink.FreshArrays), eager, opts);

                // The fast path: factors still in their files, the run's sink taking the output dtype.
                var deferred = AdapterModules.Load(adapters, path, n => Enumerable.Repeat(float.NaN, n).ToArray(), defer: true);
                var route = MergeRoute.For(Cpu, new ResultSink(null, dtype));
                var got = (LowRankResult)MergeMethods.Get(method).MergeModule(route, deferred, opts);

                var encoded = Assert.IsType<EncodedFactors>(got.Encoded);
                Assert.Equal(dtype, encoded.DType);
                Assert.Equal(Encode(want.A, dtype), encoded.A.AsSpan(0, encoded.ALength).ToArray());
                Assert.Equal(Encode(want.B, dtype), encoded.B.AsSpan(0, encoded.BLength).ToArray());
                Assert.Equal((want.Rank, want.Scale, want.Alpha), (got.Rank, got.Scale, got.Alpha));
                Assert.Equal(want.Stats.ThresholdsA, got.Stats.ThresholdsA);
                Assert.Equal(want.Stats.ThresholdsB, got.Stats.ThresholdsB);
                // No factor is left in its file; copa-official keeps its trimmed factors as 16-bit values.
                Assert.False(deferred.Factors.AnyInFile);
                if (method == "copa-official") Assert.Equal(FactorHome.Bits16, deferred.Factors.Home(2, b: true));
            }
        }
        finally
        {
            foreach (var a in adapters) a.Dispose();
        }
    }

    [Theory]
    [InlineData("ties", MergeSpace.Factors)]
    [InlineData("ties", MergeSpace.Delta)]
    [InlineData("task-arithmetic", MergeSpace.Delta)]
    [InlineData("pcb", MergeSpace.Delta)]
    public void FactorsStillInTheirFiles_AreReadByWhicheverStepNeedsThem(string method, MergeSpace space)
    {
        using var dir = new TempDir();
        var adapters = Enumerable.Range(0, 2)
            .Select(i => LoraAdapter.Open(TestAdapters.Write(Path.Combine(dir.Path, $"a{i}"), r: 4, alpha: 8, dtype: DType.BF16, seed: 30 + i)))
            .ToList();
        try
        {
            var opts = new MergeOptions { Method = method, Space = space };
            var path = AdapterModules.Plan(adapters)[0];
            var want = MergeMethods.Get(method).MergeModule(Cpu, AdapterModules.Load(adapters, path), opts);
            var deferred = AdapterModules.Load(adapters, path, n => Enumerable.Repeat(float.NaN, n).ToArray(), defer: true);
            var got = MergeMethods.Get(method).MergeModule(Cpu, deferred, opts);
            Assert.False(deferred.Factors.AnyInFile);
            if (want is LowRankResult w)
            {
                Assert.Equal(w.A, ((LowRankResult)got).A);
                Assert.Equal(w.B, ((LowRankResult)got).B);
            }
            else Assert.Equal(((DenseResult)want).Delta, ((DenseResult)got).Delta);
        }
        finally
        {
            foreach (var a in adapters) a.Dispose();
        }
    }

    private static byte[] Encode(float[] values, DType dtype)
    {
        var bytes = new byte[values.Length * dtype.Size()];
        ElementCodec.Encode(dtype, values, bytes);
        return bytes;
    }
}
