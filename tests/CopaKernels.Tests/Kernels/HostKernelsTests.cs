using System.Runtime.InteropServices;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels.Reference;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// The host-memory forms of families 1 and 2 (what the merge's CPU path calls, one factor per thread):
/// the same thresholds, masks and kept counts as the scalar reference, bit for bit, and the same row
/// sums as the backend's kernel, bit for bit.
/// </summary>
public class HostKernelsTests
{
    public static TheoryData<string, int, double> Cases()
    {
        var d = new TheoryData<string, int, double>();
        foreach (var kind in TestData.Kinds)
            foreach (int n in new[] { 0, 1, 31, 33, 127, 1027, 6 * 512 + 7, 50_000, 300_000 })
                foreach (double density in new[] { 1.0, 0.2, 1e-4 })
                    d.Add(kind, n, density);
        return d;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Select_MatchesReferenceBitForBit(string kind, int n, double density)
    {
        var data = TestData.Make(kind, n, n + 3);
        var want = (float[])data.Clone();
        var wantResult = ReferenceMagnitudeSelection.Select(want, density);
        var got = (float[])data.Clone();
        var result = HostKernels.SelectByMagnitude(got, density);
        Assert.Equal(wantResult, result);
        Assert.Equal(want.Select(BitConverter.SingleToUInt32Bits), got.Select(BitConverter.SingleToUInt32Bits));

        var untouched = (float[])data.Clone();
        Assert.Equal(wantResult, HostKernels.SelectByMagnitude(untouched, density, applyMask: false));
        Assert.Equal(data, untouched);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(16, 4096)]
    [InlineData(7, 33)]
    [InlineData(64, 15)]
    public void RowAbsSums_MatchTheBackendKernelBitForBit(int rows, int cols)
    {
        using var backend = new CpuBackend(2);
        var data = TestData.Make("gaussian", rows * cols, rows * 31 + cols);
        float t = ReferenceMagnitudeSelection.Select((float[])data.Clone(), 0.3).Threshold;

        using var x = backend.Allocate(Math.Max(1, data.Length) * 4L);
        using var sums = backend.Allocate(2L * rows * 4);
        backend.Upload(MemoryMarshal.AsBytes(data.AsSpan()), x, 0);
        backend.RowAbsSums(new MatrixView(x, 0, rows, cols), new BufferView(sums, 0), new RowThreshold(t, new BufferView(sums, rows), ZeroBelow: true));
        var wantSums = new float[2 * rows];
        backend.Download(sums, 0, MemoryMarshal.AsBytes(wantSums.AsSpan()));
        var wantX = new float[data.Length];
        backend.Download(x, 0, MemoryMarshal.AsBytes(wantX.AsSpan()));

        var got = (float[])data.Clone();
        var gotSums = new float[2 * rows];
        HostKernels.RowAbsSums(got, rows, cols, gotSums.AsSpan(0, rows), t, gotSums.AsSpan(rows), applyMask: true);
        Assert.Equal(wantSums, gotSums);
        Assert.Equal(wantX, got);

        // And within fp32 rounding of the double-accumulating reference.
        var (refSums, refMasked) = ReferenceRowAbsSums.Compute(data, rows, cols, t);
        for (int i = 0; i < rows; i++)
        {
            Assert.Equal(refSums[i], gotSums[i], refSums[i] * 1e-5f);
            Assert.Equal(refMasked[i], gotSums[rows + i], refMasked[i] * 1e-5f);
        }
    }

    [Fact]
    public void NonFiniteInput_Throws_AndBadArgumentsAreRefused()
    {
        var x = TestData.Make("gaussian", 5000, 1);
        x[4321] = float.PositiveInfinity;
        Assert.Throws<NonFiniteInputException>(() => HostKernels.SelectByMagnitude(x, 0.2));
        x[4321] = float.NaN;
        Assert.Throws<NonFiniteInputException>(() => HostKernels.SelectByMagnitude(x, 1.0));
        Assert.Throws<ArgumentOutOfRangeException>(() => HostKernels.SelectByMagnitude(new float[4], 0));
        Assert.Throws<ArgumentException>(() => HostKernels.RowAbsSums(new float[5], 2, 3, new float[2], 0, new float[2], false));
        Assert.Throws<ArgumentException>(() => HostKernels.RowAbsSums(new float[6], 2, 3, new float[1], 0, new float[2], false));
    }

    [Theory]
    [InlineData("gaussian", 1)]
    [InlineData("gaussian", 5000)]
    [InlineData("ties", 5001)]
    [InlineData("signed-zeros", 300)]
    [InlineData("lora-b", 70_000)]
    public void OrderStatistics_AreTheSortedValues(string kind, int n)
    {
        var x = TestData.Make(kind, n, 11);
        var copy = (float[])x.Clone();
        var byValue = x.OrderBy(v => v).ToArray();
        var byMagnitude = x.Select(MathF.Abs).OrderBy(v => v).ToArray();
        foreach (long k in new long[] { 1, 2, n / 3 + 1, n / 2 + 1, n - 1, n }.Where(k => k >= 1 && k <= n).Distinct())
        {
            Assert.Equal(byMagnitude[k - 1], HostKernels.KthSmallestMagnitude(x, k));
            Assert.Equal(byValue[k - 1], HostKernels.KthSmallest(x, k)); // −0 and +0 compare equal
        }
        Assert.Equal(copy, x); // read only
        Assert.Throws<ArgumentOutOfRangeException>(() => HostKernels.KthSmallest(x, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => HostKernels.KthSmallestMagnitude(x, n + 1L));
        x[0] = float.NaN;
        Assert.Throws<NonFiniteInputException>(() => HostKernels.KthSmallest(x, 1));
        Assert.Throws<NonFiniteInputException>(() => HostKernels.KthSmallestMagnitude(x, 1));
    }
}
