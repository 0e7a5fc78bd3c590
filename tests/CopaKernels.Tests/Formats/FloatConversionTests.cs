using CopaKernels.Formats.Numerics;

namespace CopaKernels.Tests.Formats;

public class FloatConversionTests
{
    /// <summary>
    /// Independent reference for F32 → BF16: pick the nearer of the two neighbouring BF16 values
    /// (compared exactly in double), ties to the even one; NaN → 0x7FC0 as PyTorch does.
    /// </summary>
    internal static ushort ReferenceBf16(float x)
    {
        if (float.IsNaN(x)) return 0x7FC0;
        uint u = BitConverter.SingleToUInt32Bits(x);
        uint lower = u & 0xFFFF_0000u;
        if (lower == u) return (ushort)(u >> 16);
        uint upper = lower + 0x1_0000u;
        double dx = Math.Abs((double)x);
        double lo = Math.Abs((double)BitConverter.UInt32BitsToSingle(lower));
        // The magnitude above the largest finite BF16 is 2^128 (where +Inf sits in the encoding).
        double hi = (upper & 0x7FFF_FFFFu) == 0x7F80_0000u ? Math.Pow(2, 128) : Math.Abs((double)BitConverter.UInt32BitsToSingle(upper));
        double dLo = dx - lo, dHi = hi - dx;
        if (dLo < dHi) return (ushort)(lower >> 16);
        if (dHi < dLo) return (ushort)(upper >> 16);
        return ((lower >> 16) & 1) == 0 ? (ushort)(lower >> 16) : (ushort)(upper >> 16);
    }

    private static float[] Interesting()
    {
        var list = new List<float>
        {
            0f, -0f, 1f, -1f, float.Epsilon, -float.Epsilon, float.MaxValue, float.MinValue,
            float.PositiveInfinity, float.NegativeInfinity, float.NaN, -float.NaN,
            BitConverter.UInt32BitsToSingle(0x7F80_0001), BitConverter.UInt32BitsToSingle(0xFFC0_1234),
            BitConverter.UInt32BitsToSingle(0x3F80_8000), // exact tie, even below
            BitConverter.UInt32BitsToSingle(0x3F81_8000), // exact tie, odd below
            BitConverter.UInt32BitsToSingle(0x7F7F_8000), // tie at the top: rounds to +Inf
            BitConverter.UInt32BitsToSingle(0x7F7F_7FFF),
            BitConverter.UInt32BitsToSingle(0x0000_8000), BitConverter.UInt32BitsToSingle(0x0001_8000), // denormal ties
            BitConverter.UInt32BitsToSingle(0x807F_FFFF),
        };
        var rng = new Random(7);
        for (int i = 0; i < 200_000; i++)
        {
            uint u = (uint)rng.NextInt64(0, 1L << 32);
            // Bias a quarter of them to exact ties and near-ties.
            if ((i & 3) == 0) u = (u & 0xFFFF_0000u) | 0x8000u | (uint)rng.Next(0, 2);
            list.Add(BitConverter.UInt32BitsToSingle(u));
        }
        return list.ToArray();
    }

    [Fact]
    public void Bf16Narrowing_MatchesReference_BitForBit()
    {
        var src = Interesting();
        var dst = new ushort[src.Length];
        FloatConversion.SingleToBf16(src, dst);
        for (int i = 0; i < src.Length; i++)
        {
            var want = ReferenceBf16(src[i]);
            Assert.True(want == dst[i], $"input 0x{BitConverter.SingleToUInt32Bits(src[i]):X8}: expected 0x{want:X4}, got 0x{dst[i]:X4}");
            Assert.Equal(want, FloatConversion.SingleToBf16(src[i]));
        }
    }

    [Fact]
    public void Bf16VectorHelpers_AreTheSpanConversions_BitForBit()
    {
        var src = Interesting();
        int n = src.Length / 16 * 16;
        for (int i = 0; i < n; i += 16)
        {
            var narrowed = FloatConversion.SingleToBf16(System.Runtime.Intrinsics.Vector512.Create(src, i));
            for (int l = 0; l < 16; l++) Assert.Equal(ReferenceBf16(src[i + l]), narrowed[l]);
        }
        for (int b = 0; b < 65536; b += 16)
        {
            var bits = System.Runtime.Intrinsics.Vector256.Create(Enumerable.Range(b, 16).Select(x => (ushort)x).ToArray());
            var widened = FloatConversion.Bf16ToSingle(bits);
            for (int l = 0; l < 16; l++)
                Assert.Equal((uint)(b + l) << 16, BitConverter.SingleToUInt32Bits(widened[l]));
        }
    }

    [Fact]
    public void Bf16Widening_IsExact_ForAll65536Patterns()
    {
        var src = new ushort[65536];
        for (int i = 0; i < src.Length; i++) src[i] = (ushort)i;
        var dst = new float[src.Length];
        FloatConversion.Bf16ToSingle(src, dst);
        for (int i = 0; i < src.Length; i++)
            Assert.Equal((uint)i << 16, BitConverter.SingleToUInt32Bits(dst[i]));
        // Widen then narrow is the identity on every non-NaN pattern.
        var back = new ushort[src.Length];
        FloatConversion.SingleToBf16(dst, back);
        for (int i = 0; i < src.Length; i++)
            if (!float.IsNaN(dst[i])) Assert.Equal((ushort)i, back[i]);
            else Assert.Equal((ushort)0x7FC0, back[i]);
    }

    [Fact]
    public void F16_RoundTrip_MatchesHalfCast()
    {
        var src = Interesting();
        var half = new ushort[src.Length];
        FloatConversion.SingleToHalf(src, half);
        for (int i = 0; i < src.Length; i++)
        {
            var want = BitConverter.HalfToUInt16Bits((Half)src[i]);
            if (float.IsNaN(src[i])) Assert.True(Half.IsNaN(BitConverter.UInt16BitsToHalf(half[i])));
            else Assert.True(want == half[i], $"input 0x{BitConverter.SingleToUInt32Bits(src[i]):X8}: expected 0x{want:X4}, got 0x{half[i]:X4}");
        }
        var all = new ushort[65536];
        for (int i = 0; i < all.Length; i++) all[i] = (ushort)i;
        var wide = new float[all.Length];
        FloatConversion.HalfToSingle(all, wide);
        for (int i = 0; i < all.Length; i++)
        {
            var want = (float)BitConverter.UInt16BitsToHalf((ushort)i);
            if (float.IsNaN(want)) Assert.True(float.IsNaN(wide[i]));
            else Assert.Equal(BitConverter.SingleToUInt32Bits(want), BitConverter.SingleToUInt32Bits(wide[i]));
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(15)]
    [InlineData(17)]
    [InlineData(31)]
    [InlineData(33)]
    [InlineData(127)]
    [InlineData(1027)]
    public void Bf16_AllLengths_HandleTails(int n)
    {
        var rng = new Random(n);
        var src = new float[n];
        for (int i = 0; i < n; i++) src[i] = (float)(rng.NextDouble() * 2 - 1) * 1000f;
        var bf = new ushort[n];
        FloatConversion.SingleToBf16(src, bf);
        var wide = new float[n];
        FloatConversion.Bf16ToSingle(bf, wide);
        for (int i = 0; i < n; i++)
        {
            Assert.Equal(ReferenceBf16(src[i]), bf[i]);
            Assert.Equal((uint)bf[i] << 16, BitConverter.SingleToUInt32Bits(wide[i]));
        }
    }
}
