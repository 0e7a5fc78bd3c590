using CopaKernels.Formats.Peft;
using CopaKernels.Merge;
using CopaKernels.Merge.Streaming;
using CopaKernels.Tests.Cli;
using CopaKernels.Tests.Kernels;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// <c>copa merge --device opencl</c> against <c>--device cpu</c>, end to end through the CLI: the same
/// trim thresholds (bit for bit, from the reports), the same trimmed A factors, and every written value
/// within fp32 rounding. Skipped without an OpenCL device unless REQUIRE_OPENCL=1 (CI on PoCL).
/// </summary>
[RequiresOpenCl]
public sealed class CrossDeviceMergeTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    public static TheoryData<string, string, string> Cases()
    {
        var d = new TheoryData<string, string, string>();
        foreach (var m in MergeMethods.Names) d.Add(m, "adapter", "factors");
        d.Add("copa", "model", "factors");
        d.Add("ties", "model", "factors");
        // Delta space: the trims run on products (bit-exact on every backend), so thresholds must match too.
        foreach (var m in new[] { "ties", "magnitude-prune", "pcb", "dare" }) d.Add(m, "delta", "delta");
        d.Add("ties", "model", "delta");
        return d;
    }

    private string Merge(string device, string method, string mode, string space)
    {
        var output = fx.NewOutput($"{device}-{method}-{mode}-{space}");
        var args = new List<string> { "merge", "--method", method, "--output", mode, "--base", fx.Base, "--out", output,
            "--device", device, "--out-dtype", "f32", "--quiet" };
        // Only the parameters the method reads: any other one is refused.
        var reads = MergeMethods.Get(method).Parameters;
        if (reads.Seed) args.AddRange(["--seed", "9"]);
        if (reads.Space) args.AddRange(["--space", space]);
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        var (code, _, err) = CliRunner.Run(args.ToArray());
        Assert.True(code == 0, $"{device}: {err}");
        return output;
    }

    [BackendTheory]
    [InlineData("model", "f32")]
    [InlineData("model", "bf16")]
    [InlineData("model", "f16")]
    [InlineData("delta", "f32")]
    public void OpenCl_OverflowInTheProduct_IsAnError(string mode, string dtype)
    {
        // The device's epilogue raises the non-finite flag; the host reads it with the tile and refuses.
        var output = fx.NewOutput($"opencl-overflow-{mode}-{dtype}");
        var args = new List<string> { "merge", "--method", "copa", "--lambda", dtype == "f16" ? "1e9" : "1e39", "--output", mode,
            "--base", fx.Base, "--out", output, "--device", "opencl", "--out-dtype", dtype, "--quiet" };
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        var (code, _, err) = CliRunner.Run(args.ToArray());
        Assert.True(code == 2, $"exit {code}: {err}");
        Assert.Contains($"merged values overflow {dtype.ToUpperInvariant()}", err);
        Assert.False(Directory.Exists(output));
    }

    [BackendTheory]
    [MemberData(nameof(Cases))]
    public void OpenCl_MatchesCpu(string method, string mode, string space)
    {
        var cpu = Merge("cpu", method, mode, space);
        var gpu = Merge("opencl", method, mode, space);
        var rc = MergeReport.FromJson(File.ReadAllText(Path.Combine(cpu, MergeReport.FileName)));
        var rg = MergeReport.FromJson(File.ReadAllText(Path.Combine(gpu, MergeReport.FileName)));
        Assert.Contains("opencl", rg.Device, StringComparison.OrdinalIgnoreCase);
        for (int i = 0; i < rc.Modules.Count; i++)
        {
            Assert.Equal(rc.Modules[i].Path, rg.Modules[i].Path);
            Assert.Equal(rc.Modules[i].ThresholdsA.Select(BitConverter.SingleToUInt32Bits), rg.Modules[i].ThresholdsA.Select(BitConverter.SingleToUInt32Bits));
            Assert.Equal(rc.Modules[i].ThresholdsB.Select(BitConverter.SingleToUInt32Bits), rg.Modules[i].ThresholdsB.Select(BitConverter.SingleToUInt32Bits));
            Assert.Equal(rc.Modules[i].Kept, rg.Modules[i].Kept);
        }
        if (mode == "adapter")
        {
            using var a = LoraAdapter.Open(cpu);
            using var b = LoraAdapter.Open(gpu);
            foreach (var m in a.Modules)
            {
                var o = b.Modules.Single(x => x.Path == m.Path);
                // copa's A is the trimmed inputs themselves: identical when the masks are.
                if (method == "copa") Assert.Equal(a.Weights.ReadSingles(m.A), b.Weights.ReadSingles(o.A));
                Close(a.Weights.ReadSingles(m.A), b.Weights.ReadSingles(o.A), m.Path);
                Close(a.Weights.ReadSingles(m.B), b.Weights.ReadSingles(o.B), m.Path);
            }
        }
        else
            foreach (var m in rc.Modules)
                Close(StreamingFixture.Read(cpu, m.Path + ".weight"), StreamingFixture.Read(gpu, m.Path + ".weight"), m.Path);
    }

    private static void Close(float[] x, float[] y, string what)
    {
        Assert.Equal(x.Length, y.Length);
        double scale = x.Max(v => Math.Abs((double)v)) + 1e-30;
        for (int i = 0; i < x.Length; i++)
            Assert.True(Math.Abs(x[i] - y[i]) <= 1e-5 * scale, $"{what}[{i}]: cpu {x[i]}, opencl {y[i]}");
    }
}
