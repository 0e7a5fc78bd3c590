using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels.Reference;
using CopaKernels.Kernels;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// Family 1 on BF16/F16 storage (<see cref="HostKernels.SelectByMagnitude(Span{ushort}, DType, double, bool)"/>):
/// threshold, kept count and mask equal the scalar reference's on the widened values, bit for bit.
/// </summary>
public unsafe class Selection16Tests
{
    public static TheoryData<string, int, double, DType> Cases()
    {
        var d = new TheoryData<string, int, double, DType>();
        foreach (var format in new[] { DType.BF16, DType.F16 })
            foreach (var kind in TestData.Kinds)
                foreach (int n in new[] { 0, 1, 31, 33, 127, 1027, 6 * 512 + 7, 65_536 + 5, 300_000 })
                    foreach (double density in new[] { 1.0, 0.2, 1e-4 })
                        d.Add(kind, n, density, format);
        return d;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Select_MatchesReferenceOnTheWidenedValues(string kind, int n, double density, DType format)
    {
        var bits = Narrow(TestData.Make(kind, n, n + 5), format);
        AssertMatchesReference(bits, density, format);
    }

    [Fact]
    public void EverySizeUpTo256_MatchesReference()
    {
        foreach (var format in new[] { DType.BF16, DType.F16 })
            for (int n = 0; n <= 256; n++)
                foreach (var kind in new[] { "gaussian", "ties", "signed-zeros" })
                    AssertMatchesReference(Narrow(TestData.Make(kind, n, 3 * n + 1), format), 0.2, format);
    }

    [Theory]
    [InlineData("hit")]
    [InlineData("miss-low")]
    [InlineData("miss-high")]
    [InlineData("empty-bracket")]
    public void ForcedBrackets_AreExactAllTheSame(string which)
    {
        foreach (var format in new[] { DType.BF16, DType.F16 })
            foreach (var kind in new[] { "gaussian", "ties", "lora-b" })
            {
                var bits = Narrow(TestData.Make(kind, 50_000, 9), format);
                var widened = Widen(bits, format);
                var want = ReferenceMagnitudeSelection.Select(widened, 0.2);
                uint tk = Key(want.Threshold, format);
                (uint, uint) bracket = which switch
                {
                    "hit" => (tk == 0 ? 0 : tk - 1, tk + 1),
                    "miss-low" => (tk + 1, tk + 100),
                    "miss-high" => (0, tk == 0 ? 0 : tk - 1),
                    _ => (0x7000, 0x7000),
                };
                fixed (ushort* p = bits)
                {
                    var got = MagnitudeSelection16.Select(p, bits.Length, want.K, format, applyMask: true, out bool finite, bracket);
                    Assert.True(finite);
                    Assert.Equal(want, got);
                }
                Assert.Equal(widened.Select(BitConverter.SingleToUInt32Bits), Widen(bits, format).Select(BitConverter.SingleToUInt32Bits));
            }
    }

    [Theory]
    [InlineData(DType.BF16, (ushort)0x7F80)] // +Inf
    [InlineData(DType.BF16, (ushort)0xFF80)] // −Inf
    [InlineData(DType.BF16, (ushort)0x7FC0)] // NaN
    [InlineData(DType.F16, (ushort)0x7C00)]
    [InlineData(DType.F16, (ushort)0xFC00)]
    [InlineData(DType.F16, (ushort)0x7E00)]
    public void NonFinite_IsAnError_AtAnyPosition_AndAnyDensity(DType format, ushort bad)
    {
        foreach (int n in new[] { 1, 33, 1027, 70_001 })
            foreach (int at in new[] { 0, n / 2, n - 1 })
                foreach (double density in new[] { 1.0, 0.2 })
                {
                    var bits = Narrow(TestData.Make("gaussian", n, 4), format);
                    bits[at] = bad;
                    Assert.Throws<NonFiniteInputException>(() => HostKernels.SelectByMagnitude(bits, format, density));
                }
    }

    [Fact]
    public void LargestFiniteValues_AreNotMistakenForInfinity()
    {
        foreach (var format in new[] { DType.BF16, DType.F16 })
        {
            ushort maxFinite = format == DType.BF16 ? (ushort)0x7F7F : (ushort)0x7BFF;
            var bits = Enumerable.Range(0, 5000).Select(i => (ushort)(i % 2 == 0 ? maxFinite : maxFinite | 0x8000)).ToArray();
            bits[17] = 1;
            AssertMatchesReference(bits, 0.5, format);
        }
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void MaskByMagnitude_CutsAtTheThreshold_WhateverItsPrecision(DType format)
    {
        var bits = Narrow(TestData.Make("gaussian", 5003, 2), format);
        var widened = Widen(bits, format);
        var t = ReferenceMagnitudeSelection.Select((float[])widened.Clone(), 0.3).Threshold;
        // The selected threshold itself, and thresholds between two representable values.
        foreach (float threshold in new[] { t, -t, t * 1.0001f, t * 0.9999f, 0f })
        {
            var masked = (ushort[])bits.Clone();
            long kept = HostKernels.MaskByMagnitude(masked, format, threshold);
            var want = widened.Select(v => MathF.Abs(v) >= MathF.Abs(threshold) ? v : 0f).ToArray();
            Assert.Equal(want.Count(v => MathF.Abs(v) >= MathF.Abs(threshold)), kept);
            Assert.Equal(want.Select(BitConverter.SingleToUInt32Bits), Widen(masked, format).Select(BitConverter.SingleToUInt32Bits));
        }
    }

    private static void AssertMatchesReference(ushort[] bits, double density, DType format)
    {
        var widened = Widen(bits, format);
        var want = ReferenceMagnitudeSelection.Select(widened, density);

        var masked = (ushort[])bits.Clone();
        var got = HostKernels.SelectByMagnitude(masked, format, density);
        Assert.Equal(want, got);
        // Masked entries are +0 bits; kept ones are untouched, so widening gives the reference's array.
        Assert.Equal(widened.Select(BitConverter.SingleToUInt32Bits), Widen(masked, format).Select(BitConverter.SingleToUInt32Bits));

        var untouched = (ushort[])bits.Clone();
        Assert.Equal(want, HostKernels.SelectByMagnitude(untouched, format, density, applyMask: false));
        Assert.Equal(bits, untouched);
        Assert.Equal(want, HostKernels.ThresholdByMagnitude(untouched, format, density));
        Assert.Equal(bits, untouched);

        // Out of place: the trimmed copy is the in-place trim, the source is left as it was.
        var copy = new ushort[bits.Length + 3];
        Array.Fill(copy, (ushort)0xBEEF);
        Assert.Equal(want.Kept, HostKernels.MaskByMagnitude(untouched, copy, format, want.Threshold));
        Assert.Equal(masked, copy[..bits.Length]);
        Assert.All(copy[bits.Length..], v => Assert.Equal(0xBEEF, v));
        Assert.Equal(bits, untouched);
    }

    /// <summary>Rounds to the 16-bit format (nearest-even; F16 overflow saturates to the largest finite value).</summary>
    internal static ushort[] Narrow(float[] x, DType format) => x.Select(v => format == DType.BF16
        ? CopaKernels.Formats.Numerics.FloatConversion.SingleToBf16(v)
        : BitConverter.HalfToUInt16Bits(Half.IsInfinity((Half)v) ? (v > 0 ? Half.MaxValue : Half.MinValue) : (Half)v)).ToArray();

    internal static float[] Widen(ushort[] bits, DType format) => bits.Select(b => format == DType.BF16
        ? BitConverter.UInt32BitsToSingle((uint)b << 16)
        : (float)BitConverter.UInt16BitsToHalf(b)).ToArray();

    private static uint Key(float t, DType format) => format == DType.BF16
        ? BitConverter.SingleToUInt32Bits(t) >> 16
        : (uint)BitConverter.HalfToUInt16Bits((Half)t);
}
