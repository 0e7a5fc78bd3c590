using System.Runtime.InteropServices;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels.Reference;

namespace CopaKernels.Tests.Kernels;

/// <summary>The CPU selection's internal paths, forced: the sampled bracket hit, missed low, missed high.</summary>
public unsafe class CpuSelectionPathTests
{
    [Theory]
    [InlineData("hit")]
    [InlineData("miss-low")]
    [InlineData("miss-high")]
    [InlineData("empty-bracket")]
    [InlineData("ends-only")] // on "ties", over a quarter of the keys equal t: the lean pass's copy overflows
    public void LargePath_IsExact_WhateverTheBracket(string which)
    {
        using var backend = new CpuBackend(2);
        foreach (var kind in new[] { "gaussian", "ties", "lora-b" })
        {
            var data = TestData.Make(kind, 50_000, 9);
            var expected = (float[])data.Clone();
            var want = ReferenceMagnitudeSelection.Select(expected, 0.2);
            uint tk = BitConverter.SingleToUInt32Bits(want.Threshold);
            (uint, uint) bracket = which switch
            {
                "hit" => (tk == 0 ? 0 : tk - 1, tk + 1),
                "miss-low" => (tk + 1, tk + 100),        // k-th is below the bracket
                "miss-high" => (0, tk == 0 ? 0 : tk - 1), // k-th is above the bracket
                "ends-only" => (tk, tk),
                _ => (0x7F00_0000, 0x7F00_0000),
            };
            AssertLargePathGives(backend, data, bracket, want, expected);
        }
    }

    [Theory]
    [InlineData("gaussian", 1)]
    [InlineData("gaussian", 2)]
    [InlineData("ties", 2)]
    [InlineData("lora-b", 3)]
    public void LargePath_WithAWideBracket_FinishesTheCopyWithTheThreads_AndIsExact(string kind, int threads)
    {
        // A bracket holding about half of 600K keys: its copy is above LargeThreshold, so the finish runs the
        // sampled select again on the copy with the backend's threads (SelectKeys with the backend).
        using var backend = new CpuBackend(threads);
        var data = TestData.Make(kind, 600_000, 17);
        var expected = (float[])data.Clone();
        var want = ReferenceMagnitudeSelection.Select(expected, 0.3);
        var keys = data.Select(v => BitConverter.SingleToUInt32Bits(v) & 0x7FFF_FFFFu).OrderBy(v => v).ToArray();
        var bracket = (keys[keys.Length / 5], keys[keys.Length * 3 / 4]);
        Assert.True(want.K > keys.Length / 5 && want.K < keys.Length * 3 / 4);
        AssertLargePathGives(backend, data, bracket, want, expected);
    }

    /// <summary>The large path with a forced bracket, on a copy of <paramref name="data"/>: the reference's selection and mask.</summary>
    private static void AssertLargePathGives(CpuBackend backend, float[] data, (uint, uint) bracket, SelectionResult want, float[] expected)
    {
        using var buf = (CpuBuffer)backend.Allocate(data.Length * 4);
        backend.Upload(MemoryMarshal.AsBytes(data.AsSpan()), buf, 0);
        var got = MagnitudeSelection.SelectTensor(backend, buf.Floats(0), data.Length, want.K, true, out bool finite, bracket);
        Assert.True(finite);
        Assert.Equal(want, got);
        Assert.Equal(expected, buf.Span<float>(0, data.Length).ToArray());
    }

    [Fact]
    public void RadixSelect_OnAHugeSingleBucket_UsesPooledScratch_AndIsExact()
    {
        // 1.5M keys in one top-level bucket: the copy-out exceeds the per-thread scratch limit.
        var rng = new Random(11);
        var data = new float[1_500_000];
        for (int i = 0; i < data.Length; i++) data[i] = 1f + (float)rng.NextDouble() * 1e-3f;
        var sorted = data.Select(MathF.Abs).ToArray();
        Array.Sort(sorted);
        long k = 1_000_003;
        fixed (float* p = data)
        {
            uint t = MagnitudeSelection.RadixSelect((uint*)p, data.Length, k, out long less, out bool finite);
            Assert.True(finite);
            Assert.Equal(BitConverter.SingleToUInt32Bits(sorted[k - 1]), t);
            Assert.Equal(Array.FindIndex(sorted, v => v >= sorted[k - 1]), (int)less);
        }
    }

    [Theory]
    [InlineData("random")]
    [InlineData("sorted")]
    [InlineData("reversed")]
    [InlineData("few-values")]
    [InlineData("all-equal")]
    [InlineData("one-outlier")]
    public void PivotSelect_GivesTheKthKeyAndTheCountBelow_ForEveryRank(string order)
    {
        var rng = new Random(23);
        foreach (int n in new[] { 1, 2, 15, 16, 17, 31, 32, 33, 64, 127, 1027, 6 * 512 + 7 })
        {
            var keys = new uint[n];
            for (int i = 0; i < n; i++)
            {
                keys[i] = order switch
                {
                    "few-values" => (uint)rng.Next(3) * 0x0100_0000u,
                    "all-equal" => 0x3F80_0000u,
                    "one-outlier" => i == n / 2 ? 0x7F7F_FFFFu : 0x3000_0000u,
                    _ => (uint)rng.Next() & 0x7FFF_FFFFu,
                };
            }
            if (order == "sorted") Array.Sort(keys);
            if (order == "reversed") { Array.Sort(keys); Array.Reverse(keys); }
            var sorted = (uint[])keys.Clone();
            Array.Sort(sorted);
            // Every rank on small arrays, a spread of ranks on the others (the first, the last, ties).
            var ranks = n <= 130 ? Enumerable.Range(1, n) : new[] { 1, 2, n / 5, n / 2, n - 1, n }.Concat(Enumerable.Range(0, 40).Select(_ => rng.Next(1, n + 1)));
            foreach (int k in ranks)
            {
                var work = (uint[])keys.Clone();
                uint t;
                long less;
                fixed (uint* w = work) t = MagnitudeSelection.PivotSelect(w, n, k, out less);
                Assert.Equal(sorted[k - 1], t);
                Assert.Equal(Array.IndexOf(sorted, t), (int)less);
            }
        }
    }
}
