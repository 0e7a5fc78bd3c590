using System.Runtime.InteropServices;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels.Reference;
using CopaKernels.Kernels;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// Families 3 and 4 against the double-precision reference: odd shapes (every SIMD tail and partial GPU
/// tile), several terms, scales, row tiles, base and output types, in-place accumulation. Abstract: every
/// backend runs it (<see cref="LowRankProductTests"/> adds the CPU backend's own thread-count, K-blocking
/// and vector-path checks).
/// </summary>
public abstract class LowRankProductSuite
{
    /// <summary>A backend with <paramref name="threads"/> worker threads (backends without threads ignore it).</summary>
    protected abstract IMergeBackend CreateBackend(int threads);

    /// <summary>Whether <see cref="RunBackend"/> disposes what <see cref="CreateBackend"/> returned (false for a shared device backend).</summary>
    protected virtual bool OwnsBackend => true;

    /// <summary>Largest output tile (rows × d_in) this backend's tests compute: an emulator checks only the first rows of a bigger tile.</summary>
    protected virtual long MaxTileElements => long.MaxValue;

    protected sealed record Term(float[] B, float[] A, int Rank, float Factor, float[]? Scale);

    protected sealed record Result(float[] Values, uint[] Bits, uint Flag = 0);

    protected static Term[] MakeTerms(int[] ranks, int dOut, int dIn, bool scaled, int seed)
    {
        var rng = new Random(seed);
        var terms = new Term[ranks.Length];
        for (int t = 0; t < ranks.Length; t++)
        {
            int r = ranks[t];
            var b = new float[dOut * r];
            var a = new float[r * dIn];
            for (int i = 0; i < b.Length; i++) b[i] = (float)(TestData.Gaussian(rng) * 0.05);
            for (int i = 0; i < a.Length; i++) a[i] = (float)(TestData.Gaussian(rng) * 0.05);
            float[]? s = null;
            if (scaled)
            {
                s = new float[r];
                for (int i = 0; i < r; i++) s[i] = (float)(0.25 + rng.NextDouble());
            }
            terms[t] = new Term(b, a, r, (float)(0.5 + 2 * rng.NextDouble()), s);
        }
        return terms;
    }

    /// <summary>A base tile already representable in <paramref name="type"/> (so the reference sees what the kernel reads).</summary>
    protected static float[] MakeBase(int n, DType type, int seed)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = Widen(Narrow((float)(TestData.Gaussian(rng) * 0.02), type), type);
        return x;
    }

    private static uint Narrow(float v, DType type) => type switch
    {
        DType.F32 => BitConverter.SingleToUInt32Bits(v),
        DType.BF16 => FloatConversion.SingleToBf16(v),
        _ => BitConverter.HalfToUInt16Bits((Half)v),
    };

    private static float Widen(uint bits, DType type) => type switch
    {
        DType.F32 => BitConverter.UInt32BitsToSingle(bits),
        DType.BF16 => FloatConversion.Bf16ToSingle((ushort)bits),
        _ => (float)BitConverter.UInt16BitsToHalf((ushort)bits),
    };

    private static byte[] Encode(float[] x, DType type)
    {
        if (type == DType.F32) return MemoryMarshal.AsBytes(x.AsSpan()).ToArray();
        var u = new ushort[x.Length];
        if (type == DType.BF16) FloatConversion.SingleToBf16(x, u);
        else FloatConversion.SingleToHalf(x, u);
        return MemoryMarshal.AsBytes(u.AsSpan()).ToArray();
    }

    /// <summary>
    /// Runs the backend on one tile. Factors share one buffer at odd offsets; output and base sit at odd
    /// element offsets inside larger buffers, whose padding must stay untouched.
    /// </summary>
    protected Result RunBackend(int threads, Term[] terms, int dOut, int dIn, int rowStart, int rowCount,
        DType outType, DType? baseType = null, float[]? baseTile = null, bool inPlace = false, bool bitExact = false,
        bool withFlag = false)
    {
        var backend = CreateBackend(threads);
        try
        {
            return RunOn(backend, terms, dOut, dIn, rowStart, rowCount, outType, baseType, baseTile, inPlace, bitExact, withFlag);
        }
        finally
        {
            if (OwnsBackend) backend.Dispose();
        }
    }

    private static Result RunOn(IMergeBackend backend, Term[] terms, int dOut, int dIn, int rowStart, int rowCount,
        DType outType, DType? baseType, float[]? baseTile, bool inPlace, bool bitExact, bool withFlag)
    {
        long total = 3;
        var offsets = new (long B, long A, long S)[terms.Length];
        for (int t = 0; t < terms.Length; t++)
        {
            offsets[t].B = total; total += terms[t].B.Length + 1;
            offsets[t].A = total; total += terms[t].A.Length + 3;
            offsets[t].S = total; total += terms[t].Rank + 1;
        }
        using var factors = backend.Allocate(total * 4);
        var lrt = new LowRankTerm[terms.Length];
        for (int t = 0; t < terms.Length; t++)
        {
            var term = terms[t];
            backend.Upload(MemoryMarshal.AsBytes(term.B.AsSpan()), factors, offsets[t].B * 4);
            backend.Upload(MemoryMarshal.AsBytes(term.A.AsSpan()), factors, offsets[t].A * 4);
            if (term.Scale != null) backend.Upload(MemoryMarshal.AsBytes(term.Scale.AsSpan()), factors, offsets[t].S * 4);
            lrt[t] = new LowRankTerm(factors, offsets[t].B, factors, offsets[t].A, term.Rank, term.Factor,
                term.Scale != null ? factors : null, offsets[t].S);
        }

        int n = rowCount * dIn, size = outType.Size();
        const long outOff = 5, pad = 7;
        using var output = backend.Allocate((outOff + n + pad) * size);
        var sentinel = Enumerable.Repeat((byte)0xA5, (int)output.ByteLength).ToArray();
        backend.Upload(sentinel, output, 0);
        KernelBuffer? baseBuf = null;
        long baseOff = 0;
        if (baseTile != null)
        {
            if (inPlace)
            {
                backend.Upload(Encode(baseTile, outType), output, outOff * size);
                (baseBuf, baseOff, baseType) = (output, outOff, outType);
            }
            else
            {
                baseOff = 9;
                baseBuf = backend.Allocate((baseOff + n) * baseType!.Value.Size());
                backend.Upload(Encode(baseTile, baseType.Value), baseBuf, baseOff * baseType.Value.Size());
            }
        }
        // The flag word sits between two sentinels (byte offset 4 of 12), zeroed as the contract asks of the caller.
        using var flag = withFlag ? backend.Allocate(12) : null;
        if (flag != null) backend.Upload([0xA5, 0xA5, 0xA5, 0xA5, 0, 0, 0, 0, 0xA5, 0xA5, 0xA5, 0xA5], flag, 0);
        try
        {
            backend.LowRankProduct(lrt, dOut, dIn,
                new ProductTile(rowStart, rowCount, output, outOff, outType, baseBuf, baseOff, baseType ?? DType.F32, bitExact,
                    flag, 4));
            var raw = new byte[output.ByteLength];
            backend.Download(output, 0, raw);
            for (int i = 0; i < raw.Length; i++)
                if ((i < outOff * size || i >= (outOff + n) * size) && raw[i] != 0xA5)
                    Assert.Fail($"byte {i} outside the output tile was written (tile {rowCount}×{dIn} {outType} at element {outOff})");
            var bits = new uint[n];
            var values = new float[n];
            for (int i = 0; i < n; i++)
            {
                int at = (int)((outOff + i) * size);
                bits[i] = size == 4 ? BitConverter.ToUInt32(raw, at) : BitConverter.ToUInt16(raw, at);
                values[i] = Widen(bits[i], outType);
            }
            uint flagWord = 0;
            if (flag != null)
            {
                var f = new byte[12];
                backend.Download(flag, 0, f);
                Assert.True(f[..4].All(x => x == 0xA5) && f[8..].All(x => x == 0xA5), "bytes beside the flag word were written");
                flagWord = BitConverter.ToUInt32(f, 4);
            }
            return new Result(values, bits, flagWord);
        }
        finally
        {
            if (baseBuf != null && !inPlace) baseBuf.Dispose();
        }
    }

    /// <summary>Σ_k |B·coef·A| per element: the scale of the rounding error of any summation order.</summary>
    private static double[] Magnitudes(Term[] terms, int dIn, int rowStart, int rowCount)
    {
        var abs = terms.Select(t => (B: t.B.Select(Math.Abs).ToArray(), A: t.A.Select(Math.Abs).ToArray(), t.Rank,
            Factor: Math.Abs(t.Factor), Scale: t.Scale?.Select(Math.Abs).ToArray())).ToArray();
        var r = ReferenceLowRankProduct.Compute(abs, rowStart + rowCount, dIn, rowStart, rowCount);
        return r.Select(v => (double)v).ToArray();
    }

    protected static string Shape(Term[] terms, int dOut, int dIn, int rowStart, int rowCount, string extra) =>
        $"d_out={dOut} d_in={dIn} ranks=[{string.Join(",", terms.Select(t => t.Rank))}] scale={terms.Any(t => t.Scale != null)} rows=[{rowStart},{rowStart + rowCount}) {extra}";

    protected void CheckAgainstReference(int threads, int[] ranks, int dOut, int dIn, int rowStart, int rowCount, bool scaled,
        DType outType = DType.F32, DType? baseType = null, bool inPlace = false, int seed = 1)
    {
        if ((long)rowCount * dIn > MaxTileElements) rowCount = (int)Math.Max(1, MaxTileElements / Math.Max(1, dIn));
        var terms = MakeTerms(ranks, dOut, dIn, scaled, seed);
        var baseTile = baseType is { } bt ? MakeBase(rowCount * dIn, inPlace ? outType : bt, seed + 100) : null;
        var got = RunBackend(threads, terms, dOut, dIn, rowStart, rowCount, outType, baseType, baseTile, inPlace);
        var want = ReferenceLowRankProduct.Compute(terms.Select(t => (t.B, t.A, t.Rank, t.Factor, t.Scale)).ToList(),
            dOut, dIn, rowStart, rowCount, baseTile);
        var mag = Magnitudes(terms, dIn, rowStart, rowCount);
        string shape = Shape(terms, dOut, dIn, rowStart, rowCount,
            $"out={outType} base={(baseType is null ? "none" : inPlace ? "in-place" : baseType.ToString())} threads={threads}");
        for (int e = 0; e < want.Length; e++)
        {
            double tol = 1e-5 * mag[e] + 2.4e-7 * Math.Abs(want[e]) + 1e-30;
            bool ok = Math.Abs((double)got.Values[e] - want[e]) <= tol;
            if (!ok && outType != DType.F32)
            {
                // The fp32 sum may land on the other side of a 16-bit rounding tie: allow one 16-bit ulp.
                uint expect = Narrow(want[e], outType);
                ok = Math.Abs(Ordered(got.Bits[e], outType) - Ordered(expect, outType)) <= 1
                    || Math.Abs((double)got.Values[e] - Widen(expect, outType)) <= tol;
            }
            if (!ok)
                Assert.Fail($"{shape}: element ({rowStart + e / dIn}, {e % dIn}) expected {want[e]:G9}, got {got.Values[e]:G9} (0x{got.Bits[e]:X}), tolerance {tol:G3}");
        }
    }

    /// <summary>Float bits mapped to integers that are monotonic in value (−0 and +0 both map to 0), so one ulp is a difference of 1.</summary>
    private static long Ordered(uint bits, DType type)
    {
        uint sign = type == DType.F32 ? 0x8000_0000u : 0x8000u;
        return (bits & sign) != 0 ? -(long)(bits & (sign - 1)) : bits;
    }

    public static TheoryData<int, int> Sizes()
    {
        var d = new TheoryData<int, int>();
        int[] sizes = [0, 1, 31, 33, 127];
        foreach (int o in sizes)
            foreach (int i in sizes.Append(1027))
                d.Add(o, i);
        d.Add(1027, 1);
        d.Add(1027, 33);
        d.Add(1027, 127);
        return d;
    }

    [BackendTheory]
    [MemberData(nameof(Sizes))]
    public void OddShapes_OneToFourTerms_MatchReference(int dOut, int dIn)
    {
        foreach (var ranks in new[] { new[] { 1 }, [3], [16], [64], [16, 3], [1, 3, 16, 64] })
            foreach (bool scaled in new[] { false, true })
                CheckAgainstReference(2, ranks, dOut, dIn, 0, dOut, scaled);
    }

    [BackendFact]
    public void LargeSquare_MatchesReference()
    {
        CheckAgainstReference(2, [16, 16, 3, 1], 1027, 1027, 0, 1027, scaled: true, seed: 2);
    }

    [BackendTheory]
    [InlineData(0, 127)]
    [InlineData(5, 61)]
    [InlineData(7, 1)]
    [InlineData(126, 1)]
    [InlineData(33, 94)]
    [InlineData(1, 0)]
    public void RowTiles_MatchReference(int rowStart, int rowCount)
    {
        CheckAgainstReference(2, [16, 3], 127, 1027, rowStart, rowCount, scaled: true);
        CheckAgainstReference(1, [64], 127, 33, rowStart, rowCount, scaled: false);
    }

    public static TheoryData<DType, DType?> TypePairs()
    {
        var d = new TheoryData<DType, DType?>();
        foreach (var o in new[] { DType.F32, DType.BF16, DType.F16 })
            foreach (var b in new DType?[] { null, DType.F32, DType.BF16, DType.F16 })
                d.Add(o, b);
        return d;
    }

    [BackendTheory]
    [MemberData(nameof(TypePairs))]
    public void BaseAndOutputTypes_MatchReference(DType outType, DType? baseType)
    {
        CheckAgainstReference(2, [16, 3], 127, 1027, 5, 61, scaled: true, outType, baseType);
        CheckAgainstReference(2, [64], 33, 31, 0, 33, scaled: false, outType, baseType);
        CheckAgainstReference(2, [1], 200, 517, 3, 190, scaled: true, outType, baseType);
    }

    [BackendTheory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void InPlaceAccumulate_MatchesReference(DType type)
    {
        CheckAgainstReference(2, [16, 3], 127, 1027, 5, 61, scaled: true, type, type, inPlace: true);
        CheckAgainstReference(2, [1, 64], 200, 517, 0, 200, scaled: false, type, type, inPlace: true);
        CheckAgainstReference(1, [16], 31, 33, 0, 31, scaled: false, type, type, inPlace: true);
    }

    [BackendFact]
    public void NoRank_GivesBaseOrZero()
    {
        CheckAgainstReference(2, [], 31, 33, 0, 31, scaled: false);
        CheckAgainstReference(2, [0, 0], 31, 33, 3, 20, scaled: true, DType.BF16, DType.F32);
        CheckAgainstReference(2, [0], 31, 33, 3, 20, scaled: true, DType.F32, DType.F16, inPlace: true);
    }

    [BackendFact]
    public void BitExact_IsItsDefinition_BitForBit()
    {
        // The same bits as the scalar definition on every backend (what makes delta-space trims agree).
        foreach (var (dOut, dIn) in new[] { (1, 1), (31, 33), (127, 1027), (33, 7), (9, 8) })
            foreach (var ranks in new[] { new[] { 1 }, [16], [16, 3], [1, 3, 16, 64], [0] })
                foreach (bool scaled in new[] { false, true })
                    foreach (var (start, count) in new[] { (0, dOut), (dOut / 3, dOut - dOut / 3) })
                    {
                        int rows = (long)count * dIn > MaxTileElements ? (int)Math.Max(1, MaxTileElements / dIn) : count;
                        var terms = MakeTerms(ranks, dOut, dIn, scaled, dOut + dIn + ranks.Sum());
                        var want = ReferenceLowRankProduct.ComputeBitExact(terms.Select(t => (t.B, t.A, t.Rank, t.Factor, t.Scale)).ToList(),
                            dOut, dIn, start, rows);
                        var got = RunBackend(2, terms, dOut, dIn, start, rows, DType.F32, bitExact: true);
                        AssertSameBits(new Result(want, want.Select(BitConverter.SingleToUInt32Bits).ToArray()), got,
                            Shape(terms, dOut, dIn, start, rows, "bit-exact"));
                    }
    }

    [BackendFact]
    public void BitExact_WithABaseOrA16BitOutput_IsRefused()
    {
        var terms = MakeTerms([4], 8, 8, scaled: false, seed: 3);
        Assert.Throws<ArgumentException>(() => RunBackend(1, terms, 8, 8, 0, 8, DType.BF16, bitExact: true));
        Assert.Throws<ArgumentException>(() => RunBackend(1, terms, 8, 8, 0, 8, DType.F32, DType.F32, new float[64], bitExact: true));
    }

    [BackendTheory]
    [MemberData(nameof(TypePairs))]
    public void NonFiniteFlag_IsRaisedExactlyWhenAStoredValueIsNotFinite(DType outType, DType? baseType)
    {
        // 127 × 1027 leaves partial GPU tiles, SIMD tails and a K-less column; the bad element goes at the
        // first, a middle and the last position of the tile.
        const int dOut = 127, dIn = 1027;
        int rowStart = 5, rows = 61;
        if ((long)rows * dIn > MaxTileElements) rows = (int)Math.Max(1, MaxTileElements / dIn);
        var baseTile = baseType is { } bt ? MakeBase(rows * dIn, bt, 7) : null;
        var clean = RunBackend(2, MakeTerms([16, 3], dOut, dIn, scaled: true, 3), dOut, dIn, rowStart, rows, outType, baseType, baseTile, withFlag: true);
        Assert.True(clean.Flag == 0, $"flag raised for a finite tile (out {outType}, base {baseType})");
        foreach (var (i, j) in new[] { (0, 0), (rows / 2, 517), (rows - 1, dIn - 1) })
        {
            // A product that overflows F32 at one element only: B and A large in one row and one column.
            var terms = MakeTerms([16, 3], dOut, dIn, scaled: true, 3);
            terms[0].B[(rowStart + i) * 16] = 1e20f;
            terms[0].A[j] = 1e20f;
            var got = RunBackend(2, terms, dOut, dIn, rowStart, rows, outType, baseType, baseTile, withFlag: true);
            Assert.True(got.Flag != 0, $"flag not raised for Inf at ({i}, {j}) (out {outType}, base {baseType})");
        }
        if (outType == DType.F16)
        {
            // Finite in F32, but above F16's largest value: Inf as stored.
            var terms = MakeTerms([1], dOut, dIn, scaled: false, 3);
            terms[0].B[(rowStart + 3) * 1] = 1000f;
            terms[0].A[40] = 1000f / terms[0].Factor;
            var got = RunBackend(2, terms, dOut, dIn, rowStart, rows, outType, baseType, baseTile, withFlag: true);
            Assert.True(got.Flag != 0, $"flag not raised for an F16 overflow (base {baseType})");
        }
    }

    [BackendFact]
    public void NonFiniteFlag_BitExact()
    {
        var terms = MakeTerms([16], 31, 33, scaled: false, 5);
        Assert.Equal(0u, RunBackend(2, terms, 31, 33, 0, 31, DType.F32, bitExact: true, withFlag: true).Flag);
        terms[0].B[16 * 30] = 1e30f;
        terms[0].A[32] = 1e30f;
        Assert.NotEqual(0u, RunBackend(2, terms, 31, 33, 0, 31, DType.F32, bitExact: true, withFlag: true).Flag);
    }

    protected static void AssertSameBits(Result expected, Result actual, string label)
    {
        Assert.Equal(expected.Bits.Length, actual.Bits.Length);
        for (int i = 0; i < expected.Bits.Length; i++)
            if (expected.Bits[i] != actual.Bits[i])
                Assert.Fail($"{label}: element {i} expected 0x{expected.Bits[i]:X} ({expected.Values[i]:G9}), got 0x{actual.Bits[i]:X} ({actual.Values[i]:G9})");
    }
}

/// <summary>
/// The suite on the SIMD CPU backend, plus its own invariants: bit-identical results across thread counts,
/// K blockings and vector widths.
/// </summary>
public sealed class LowRankProductTests : LowRankProductSuite
{
    protected override IMergeBackend CreateBackend(int threads) => new CpuBackend(threads);

    [Theory]
    [InlineData(DType.F32, null)]
    [InlineData(DType.F32, DType.F32)]
    [InlineData(DType.BF16, DType.BF16)]
    [InlineData(DType.F16, DType.F32)]
    public void ThreadCount_DoesNotChangeBits(DType outType, DType? baseType)
    {
        // Big enough to be split into many work items (the split depends on the thread count).
        var terms = MakeTerms([16, 3, 45], 401, 1031, scaled: true, seed: 3);
        var baseTile = baseType is { } bt ? MakeBase(390 * 1031, bt, 4) : null;
        var one = RunBackend(1, terms, 401, 1031, 11, 390, outType, baseType, baseTile);
        var two = RunBackend(2, terms, 401, 1031, 11, 390, outType, baseType, baseTile);
        var three = RunBackend(3, terms, 401, 1031, 11, 390, outType, baseType, baseTile);
        AssertSameBits(one, two, Shape(terms, 401, 1031, 11, 390, $"out={outType} base={baseType}: threads 1 vs 2"));
        AssertSameBits(one, three, Shape(terms, 401, 1031, 11, 390, $"out={outType} base={baseType}: threads 1 vs 3"));
    }

    [Fact]
    public void KBlocking_DoesNotChangeBits()
    {
        // Σr = 3 + 16 + 45 = 64 split into K blocks of ≤ 5, ≤ 17 and ≤ 40 (partials parked in fp32 between blocks).
        var terms = MakeTerms([3, 16, 45], 67, 301, scaled: true, seed: 8);
        var baseTile = MakeBase(61 * 301, DType.BF16, 9);
        int saved = LowRankProduct.KcMax;
        try
        {
            foreach (var (outType, baseType) in new (DType, DType?)[] { (DType.F32, null), (DType.F32, DType.F32), (DType.BF16, DType.BF16), (DType.F16, DType.BF16) })
            {
                var tileBase = baseType is null ? null : baseTile;
                LowRankProduct.KcMax = int.MaxValue;
                var whole = RunBackend(2, terms, 67, 301, 5, 61, outType, baseType, tileBase);
                foreach (int kc in new[] { 5, 17, 40 })
                {
                    LowRankProduct.KcMax = kc;
                    var split = RunBackend(2, terms, 67, 301, 5, 61, outType, baseType, tileBase);
                    AssertSameBits(whole, split, Shape(terms, 67, 301, 5, 61, $"out={outType} base={baseType}: one K pass vs K blocks of ≤ {kc}"));
                }
            }
            LowRankProduct.KcMax = 7;
            CheckAgainstReference(2, [64, 16, 3], 127, 1027, 5, 61, scaled: true, DType.F32, DType.F32);
        }
        finally
        {
            LowRankProduct.KcMax = saved;
        }
    }

    [Theory]
    [InlineData("Scalar")]
    [InlineData("Vector512")]
    public void KernelPaths_AgreeWithVector256(string pathName)
    {
        var path = Enum.Parse<LowRankProduct.KernelPath>(pathName);
        // Vector512 is emulated (two Vector256 halves) where the CPU lacks AVX-512: keep it small.
        var terms = MakeTerms([3, 16], 67, 97, scaled: true, seed: 6);
        var baseTile = MakeBase(60 * 97, DType.BF16, 7);
        var (savedPath, savedKc) = (LowRankProduct.ForcedPath, LowRankProduct.KcMax);
        try
        {
            foreach (int kc in new[] { savedKc, 7 })
                foreach (var (outType, baseType) in new (DType, DType?)[] { (DType.F32, null), (DType.F32, DType.F32), (DType.BF16, DType.BF16), (DType.F16, DType.F32) })
                {
                    LowRankProduct.KcMax = kc;
                    var tileBase = baseType is null ? null : baseTile;
                    LowRankProduct.ForcedPath = LowRankProduct.KernelPath.Vector256;
                    var v256 = RunBackend(2, terms, 67, 97, 7, 60, outType, baseType, tileBase);
                    LowRankProduct.ForcedPath = path;
                    var other = RunBackend(2, terms, 67, 97, 7, 60, outType, baseType, tileBase);
                    AssertSameBits(v256, other, Shape(terms, 67, 97, 7, 60, $"out={outType} base={baseType} KC≤{kc}: Vector256 vs {path}"));
                }
        }
        finally
        {
            (LowRankProduct.ForcedPath, LowRankProduct.KcMax) = (savedPath, savedKc);
        }
    }
}
