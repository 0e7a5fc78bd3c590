using System.Runtime.InteropServices;
using CopaKernels.Gpu;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;
using GpuProduct = CopaKernels.Gpu.LowRankProduct;

namespace CopaKernels.Tests.Kernels;

/// <summary>Device discovery, opening, argument checks of the ILGPU backend, and its integer-only 16-bit conversions.</summary>
public sealed class IlgpuDevicesTests
{
    [Fact]
    public void Report_ListsEachDeviceOnce_WithAReasonForEverySkip()
    {
        var report = IlgpuDevices.Report;
        Assert.Equal(report.Devices.Count, report.Devices.Select(d => d.Id).Distinct().Count());
        foreach (var d in report.Devices)
        {
            Assert.Matches(@"^(cuda|opencl):\d+$", d.Id);
            Assert.True(d.Kind is BackendKind.Cuda or BackendKind.OpenCL, d.Id);
            Assert.False(string.IsNullOrWhiteSpace(d.Name), d.Id);
            Assert.True(d.Usable == (d.SkipReason == null));
        }
        // A platform with no device at all says why.
        foreach (var (kind, prefix) in new[] { (BackendKind.Cuda, "CUDA"), (BackendKind.OpenCL, "OpenCL") })
            if (!report.Devices.Any(d => d.Kind == kind))
                Assert.Contains(report.Notes, n => n.StartsWith(prefix + ":", StringComparison.Ordinal));
    }

    [Fact]
    public void Auto_PrefersCuda_ThenAnOpenClGpu_ElseNone()
    {
        var devices = IlgpuDevices.Report.Devices;
        var expected = devices.FirstOrDefault(d => d.Usable && d.Kind == BackendKind.Cuda)
            ?? devices.FirstOrDefault(d => d.Usable && d.Kind == BackendKind.OpenCL && d.IsGpu);
        using var auto = IlgpuDevices.OpenAuto();
        Assert.Equal(expected?.Id, auto?.Id);
    }

    [Fact]
    public void Open_AbsentDevice_SaysWhatWasFound()
    {
        var e = Assert.Throws<InvalidOperationException>(() => IlgpuDevices.Open("cuda:97"));
        Assert.Contains("cuda:97", e.Message);
        Assert.Contains("found", e.Message);
        var e2 = Assert.Throws<InvalidOperationException>(() => IlgpuDevices.Open("opencl:97"));
        Assert.Contains("opencl:97", e2.Message);
    }

    [Fact]
    public void CpuEmulator_RoundTripsBytes_AndChecksArgumentsLikeTheCpuBackend()
    {
        using var gpu = IlgpuDevices.OpenCpuEmulator();
        using var cpu = new CpuBackend(1);
        Assert.Equal(BackendKind.IlgpuCpu, gpu.Kind);
        Assert.StartsWith("ilgpu-cpu", gpu.Name);
        using var buf = gpu.Allocate(10);
        var zeros = new byte[10];
        gpu.Download(buf, 0, zeros);
        Assert.All(zeros, b => Assert.Equal(0, b));
        gpu.Upload(new byte[] { 1, 2, 3 }, buf, 7);
        var back = new byte[5];
        gpu.Download(buf, 5, back);
        Assert.Equal(new byte[] { 0, 0, 1, 2, 3 }, back);

        // No columns: zero sums, even with the matrix offset at the very end of the buffer.
        using var edge = gpu.Allocate(12);
        gpu.Upload(new byte[] { 1, 1, 1, 1, 1, 1, 1, 1 }, edge, 0);
        gpu.RowAbsSums(new MatrixView(edge, 3, 2, 0), new BufferView(edge, 0));
        var sums = new byte[8];
        gpu.Download(edge, 0, sums);
        Assert.All(sums, b => Assert.Equal(0, b));

        using var cbuf = cpu.Allocate(16);
        using var gbuf = gpu.Allocate(16);
        foreach (var (backend, own, other) in new (IMergeBackend, KernelBuffer, KernelBuffer)[] { (cpu, cbuf, gbuf), (gpu, gbuf, cbuf) })
        {
            Assert.Throws<ArgumentException>(() => backend.SelectByMagnitude(other, new TensorRange(0, 4), 0.5));
            Assert.Throws<ArgumentOutOfRangeException>(() => backend.SelectByMagnitude(own, new TensorRange(1, 4), 0.5));
            Assert.Throws<ArgumentOutOfRangeException>(() => backend.SelectByMagnitude(own, new TensorRange(0, 4), 0));
            Assert.Throws<ArgumentException>(() => backend.SelectByMagnitudeBatched(own, [new TensorRange(0, 1), new TensorRange(1, 1)], 0.5, new SelectionResult[1]));
            Assert.Throws<ArgumentOutOfRangeException>(() => backend.RowAbsSums(new MatrixView(own, 0, 2, 3), new BufferView(own, 0)));
            Assert.Throws<ArgumentOutOfRangeException>(() => backend.Upload(new byte[4], own, 13));
            Assert.Throws<ArgumentOutOfRangeException>(() =>
                backend.LowRankProduct([new LowRankTerm(own, 0, own, 0, 1)], 2, 2, new ProductTile(1, 2, own)));
        }
    }

    [Fact]
    public void HalfConversions_MatchSystemHalf_OnEveryHalfAndManyFloats()
    {
        for (int h = 0; h < 65536; h++)
        {
            float want = (float)BitConverter.UInt16BitsToHalf((ushort)h);
            float got = GpuProduct.HalfToSingle((ushort)h);
            if (BitConverter.SingleToUInt32Bits(want) != BitConverter.SingleToUInt32Bits(got)) Assert.Fail($"half 0x{h:X4}: expected {TestData.Bits(want)}, got {TestData.Bits(got)}");
        }
        var floats = new List<uint>();
        for (uint u = 0; u < 0x8000_0000u - 4099; u += 4099) floats.Add(u);
        // Every rounding boundary region: around each half ulp tie from subnormals through overflow.
        for (uint e = 0x3280_0000u; e <= 0x4780_0000u; e += 0x0080_0000u)
            for (uint m = 0; m < 0x0080_0000u; m += 0x1000u)
                for (uint d = 0; d < 3; d++) floats.Add(e + m + 0xFFFu - 1 + d);
        floats.AddRange([0x7F80_0000u, 0x7FC0_0000u, 0x7F80_0001u, 0x7FFF_FFFFu, 0x477F_EFFFu, 0x477F_F000u, 0x3300_0000u, 0x3300_0001u]);
        var input = new List<float>();
        foreach (var u in floats)
        {
            input.Add(BitConverter.UInt32BitsToSingle(u));
            input.Add(BitConverter.UInt32BitsToSingle(u | 0x8000_0000u));
        }
        var viaPrimitives = new ushort[input.Count];
        CopaKernels.Formats.Numerics.FloatConversion.SingleToHalf(CollectionsMarshal.AsSpan(input), viaPrimitives);
        for (int i = 0; i < input.Count; i++)
        {
            float f = input[i];
            ushort want = BitConverter.HalfToUInt16Bits((Half)f);
            if (want != GpuProduct.SingleToHalf(f)) Assert.Fail($"{TestData.Bits(f)}: System.Half 0x{want:X4}, kernel 0x{GpuProduct.SingleToHalf(f):X4}");
            if (!float.IsNaN(f) && viaPrimitives[i] != want) Assert.Fail($"{TestData.Bits(f)}: TensorPrimitives 0x{viaPrimitives[i]:X4}, System.Half 0x{want:X4}");
            if (CopaKernels.Formats.Numerics.FloatConversion.SingleToBf16(f) != GpuProduct.SingleToBf16(f)) Assert.Fail($"{TestData.Bits(f)}: BF16 differs");
        }
    }
}
