using CopaKernels.Gpu;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;
using CopaKernels.Tests.Kernels;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// Every merge method on a backend against the SIMD CPU backend: the methods only use the kernel API, so a
/// device backend must give the same trims (thresholds, kept counts, statistics exactly) and the same
/// factors or ΔW within fp32 rounding.
/// </summary>
/// <remarks>
/// Both spaces, every method: in the delta space the task deltas ΔW_n are bit-exact products
/// (ProductTile.BitExact), so a trim of ΔW_n sees the same values on every backend, and its threshold and
/// mask are the same bits too.
/// </remarks>
public abstract class MergeBackendParitySuite
{
    private static readonly CpuBackend Cpu = new(1);

    protected abstract IMergeBackend Backend { get; }

    public static TheoryData<string, MergeSpace> Methods()
    {
        var d = new TheoryData<string, MergeSpace>();
        foreach (var m in MergeMethods.Names)
            foreach (var space in new[] { MergeSpace.Factors, MergeSpace.Delta })
                d.Add(m, space);
        return d;
    }

    [BackendTheory]
    [MemberData(nameof(Methods))]
    public void Method_MatchesTheCpuBackend(string method, MergeSpace space)
    {
        var module = MergeMethodTests.Module(31, 3, 37, 29, ties: method == "ties");
        var opts = new MergeOptions { Method = method, Space = space, Density = 0.3, Seed = 5, Weights = [1.0, -0.5, 2.0] };
        var want = MergeMethods.Get(method).MergeModule(Cpu, module, opts);
        var got = MergeMethods.Get(method).MergeModule(Backend, module, opts);
        Assert.Equal(want.GetType(), got.GetType());
        Assert.Equal(want.Stats.ThresholdsA, got.Stats.ThresholdsA);
        Assert.Equal(want.Stats.ThresholdsB, got.Stats.ThresholdsB);
        Assert.Equal(want.Stats.Kept, got.Stats.Kept);
        Assert.Equal(want.Stats.Total, got.Stats.Total);
        Assert.Equal(want.Stats.ZeroDenominatorRows, got.Stats.ZeroDenominatorRows);
        if (want is LowRankResult wl)
        {
            var gl = (LowRankResult)got;
            Assert.Equal((wl.Rank, wl.Scale, wl.Alpha), (gl.Rank, gl.Scale, gl.Alpha));
            Close(wl.A, gl.A, $"{method} {space} A");
            Close(wl.B, gl.B, $"{method} {space} B");
        }
        else Close(((DenseResult)want).Delta, ((DenseResult)got).Delta, $"{method} {space} ΔW");
    }

    private static void Close(float[] want, float[] got, string label)
    {
        Assert.Equal(want.Length, got.Length);
        double max = want.Length == 0 ? 0 : want.Max(v => Math.Abs((double)v));
        for (int i = 0; i < want.Length; i++)
            if (Math.Abs((double)want[i] - got[i]) > 1e-5 * max + 1e-30)
                Assert.Fail($"{label}: element {i} expected {want[i]:G9}, got {got[i]:G9} (largest |x| {max:G3})");
    }
}

/// <summary>The merge methods on ILGPU's CPU emulator.</summary>
public sealed class IlgpuCpuMergeParityTests : MergeBackendParitySuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.OpenCpuEmulator());

    protected override IMergeBackend Backend => s_backend.Value;
}

/// <summary>The merge methods on the first usable OpenCL device.</summary>
[RequiresOpenCl]
public sealed class OpenClMergeParityTests : MergeBackendParitySuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.Open("opencl"));

    protected override IMergeBackend Backend => s_backend.Value;
}
