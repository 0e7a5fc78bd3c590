using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace CopaKernels.Kernels.Cpu;

// Family 1 on the CPU: the counting pass over a bracket, which copies the keys inside it.
// One concern of the partial class; its design and entry points are in MagnitudeSelection.cs.
internal static unsafe partial class MagnitudeSelection
{
    /// <summary>Counts of one bracket pass; Candidates (pooled) holds the keys strictly inside unless Counts.Overflow.</summary>
    internal readonly record struct BracketResult(ChunkCounts Counts, uint[] Candidates);

    /// <summary>
    /// The counting pass of <see cref="SelectKeys"/>: on the calling thread without <paramref name="backend"/>,
    /// else in chunks on its threads, whose copies are then joined in chunk order.
    /// </summary>
    /// <param name="backend">Threads, or null.</param>
    /// <param name="bits">The keys (sign ignored).</param>
    /// <param name="n">How many.</param>
    /// <param name="lo">Bracket start.</param>
    /// <param name="hi">Bracket end.</param>
    /// <param name="inclusive">Copy the keys in [lo, hi] (<see cref="CountInclusive"/>), else count the ends apart (<see cref="CountBracket"/>).</param>
    internal static BracketResult BracketPass(CpuBackend? backend, uint* bits, long n, uint lo, uint hi, bool inclusive = false)
    {
        if (backend == null) return CountChunk(bits, n, lo, hi, inclusive);
        var b = (nint)bits;
        var parts = ForEachChunk(backend, n, (start, len) => CountChunk((uint*)b + start, len, lo, hi, inclusive));
        if (parts.Length == 1) return parts[0];
        int chunks = parts.Length;
        var counts = parts.Select(x => x.Counts).ToArray();
        var lists = parts.Select(x => x.Candidates).ToArray();
        long inside = 0;
        bool overflow = false;
        foreach (var c in counts) { inside += c.Inside; overflow |= c.Overflow; }
        var all = ArrayPool<uint>.Shared.Rent((int)Math.Min(int.MaxValue - 64, overflow ? 1 : inside + 1));
        long w = 0;
        for (int c = 0; c < chunks; c++)
        {
            if (!overflow) Array.Copy(lists[c], 0, all, w, counts[c].Inside);
            w += counts[c].Inside;
            ArrayPool<uint>.Shared.Return(lists[c]);
        }
        var total = new ChunkCounts
        {
            Below = counts.Sum(c => c.Below), EqualLo = counts.Sum(c => c.EqualLo), Inside = inside,
            EqualHi = counts.Sum(c => c.EqualHi), MaxKey = counts.Max(c => c.MaxKey), Overflow = overflow,
        };
        return new BracketResult(total, all);
    }

    /// <summary>One chunk of the counting pass, its copy in a pooled list.</summary>
    private static BracketResult CountChunk(uint* bits, long n, uint lo, uint hi, bool inclusive)
    {
        // A bracket holds a few percent of the keys; a quarter of the chunk is plenty, and running out
        // only sends the select down the exact fallback.
        var list = ArrayPool<uint>.Shared.Rent((int)(n / 4) + 16);
        return new BracketResult(inclusive ? CountInclusive(bits, n, lo, hi, list) : CountBracket(bits, n, lo, hi, list), list);
    }

    internal struct ChunkCounts
    {
        public long Below, EqualLo, Inside, EqualHi;
        public uint MaxKey;
        public bool Overflow;
    }

    /// <summary>Left-pack permutations for AVX2: entry m lists the set lanes of mask m first.</summary>
    private static readonly int[] PackTable = BuildPackTable();

    private static int[] BuildPackTable()
    {
        var t = new int[256 * 8];
        for (int m = 0; m < 256; m++)
        {
            int w = 0;
            for (int lane = 0; lane < 8; lane++)
                if ((m & (1 << lane)) != 0) t[m * 8 + w++] = lane;
        }
        return t;
    }

    /// <summary>
    /// One chunk of the bracket pass, lean form: counts keys below lo and copies every key in [lo, hi]
    /// (ends included: <see cref="ChunkCounts.EqualLo"/> and <see cref="ChunkCounts.EqualHi"/> stay 0),
    /// tracking the largest key. Two compares a vector where <see cref="CountBracket"/> needs five, so
    /// the pass runs at memory speed; a bracket whose ends recur a lot overflows the copy instead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static ChunkCounts CountInclusive(uint* bits, long n, uint lo, uint hi, uint[] list)
    {
        var r = new ChunkCounts();
        long cap = list.Length - 16, w = 0, i = 0, below = 0;
        uint mx = 0, span = hi - lo;
        // w counts on past the capacity (then nothing more is stored): Overflow = w > cap.
        fixed (uint* dst = list)
        fixed (int* pack = PackTable)
        {
            if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported && n >= 64)
            {
                var abs = Vector512.Create(MagnitudeKey.F32Mask);
                var vlo = Vector512.Create(lo);
                var vspan = Vector512.Create(span);
                var one = Vector512<uint>.One;
                var vmax = Vector512<uint>.Zero;
                long blockEnd;
                for (; i <= n - 64; i = blockEnd)
                {
                    // Blocks of 2^20 vectors keep the per-lane counters far from overflow. Four vectors a
                    // step: where each packed store waits for the previous popcount (the write position),
                    // one chain of four-cycle steps bounds the loop, not the memory.
                    blockEnd = Math.Min(n - (n - i) % 64, i + 64L * (1 << 18));
                    Vector512<uint> b0 = default, b1 = default;
                    for (; i < blockEnd; i += 64)
                    {
                        var k0 = Vector512.Load(bits + i) & abs;
                        var k1 = Vector512.Load(bits + i + 16) & abs;
                        var k2 = Vector512.Load(bits + i + 32) & abs;
                        var k3 = Vector512.Load(bits + i + 48) & abs;
                        vmax = Vector512.Max(vmax, Vector512.Max(Vector512.Max(k0, k1), Vector512.Max(k2, k3)));
                        b0 = Vector512.ConditionalSelect(Vector512.LessThan(k0, vlo), b0 + one, b0);
                        b1 = Vector512.ConditionalSelect(Vector512.LessThan(k1, vlo), b1 + one, b1);
                        b0 = Vector512.ConditionalSelect(Vector512.LessThan(k2, vlo), b0 + one, b0);
                        b1 = Vector512.ConditionalSelect(Vector512.LessThan(k3, vlo), b1 + one, b1);
                        // In [lo, hi] as one unsigned compare: key − lo ≤ hi − lo (wraps for key < lo).
                        var in0 = Vector512.LessThanOrEqual(k0 - vlo, vspan);
                        var in1 = Vector512.LessThanOrEqual(k1 - vlo, vspan);
                        var in2 = Vector512.LessThanOrEqual(k2 - vlo, vspan);
                        var in3 = Vector512.LessThanOrEqual(k3 - vlo, vspan);
                        int p0 = BitOperations.PopCount(in0.ExtractMostSignificantBits());
                        int p1 = BitOperations.PopCount(in1.ExtractMostSignificantBits());
                        int p2 = BitOperations.PopCount(in2.ExtractMostSignificantBits());
                        int p3 = BitOperations.PopCount(in3.ExtractMostSignificantBits());
                        if (w <= cap - 48)
                        {
                            Avx512F.Compress(Vector512<uint>.Zero, in0, k0).Store(dst + w);
                            Avx512F.Compress(Vector512<uint>.Zero, in1, k1).Store(dst + w + p0);
                            Avx512F.Compress(Vector512<uint>.Zero, in2, k2).Store(dst + w + p0 + p1);
                            Avx512F.Compress(Vector512<uint>.Zero, in3, k3).Store(dst + w + p0 + p1 + p2);
                        }
                        w += p0 + p1 + p2 + p3;
                    }
                    below += (long)Vector512.Sum(Vector512.WidenLower(b0) + Vector512.WidenUpper(b0))
                        + (long)Vector512.Sum(Vector512.WidenLower(b1) + Vector512.WidenUpper(b1));
                }
                var m8 = Vector256.Max(vmax.GetLower(), vmax.GetUpper());
                for (int l = 0; l < 8; l++) mx = Math.Max(mx, m8[l]);
            }
            else if (Avx2.IsSupported && n >= 8)
            {
                // Keys are below 2^31, so signed compares order them correctly.
                var abs = Vector256.Create((int)MagnitudeKey.F32Mask);
                var vlo = Vector256.Create((int)lo);
                var vhi = Vector256.Create((int)hi);
                var vmax = Vector256<int>.Zero;
                long blockEnd;
                for (; i <= n - 8; i = blockEnd)
                {
                    blockEnd = Math.Min(n - (n - i) % 8, i + 8L * (1 << 20));
                    var vBelow = Vector256<int>.Zero;
                    for (; i < blockEnd; i += 8)
                    {
                        var key = Vector256.Load((int*)(bits + i)) & abs;
                        vmax = Vector256.Max(vmax, key);
                        var lt = Vector256.LessThan(key, vlo);
                        vBelow -= lt;
                        uint m = (~(lt | Vector256.GreaterThan(key, vhi))).ExtractMostSignificantBits();
                        if (w <= cap)
                            Avx2.PermuteVar8x32(key, Vector256.Load(pack + m * 8)).AsUInt32().Store(dst + w);
                        w += BitOperations.PopCount(m);
                    }
                    below += Vector256.Sum(vBelow);
                }
                for (int l = 0; l < 8; l++) mx = Math.Max(mx, (uint)vmax.GetElement(l));
            }
            for (; i < n; i++)
            {
                uint key = bits[i] & MagnitudeKey.F32Mask;
                mx = Math.Max(mx, key);
                if (key < lo) below++;
                else if (key <= hi)
                {
                    if (w <= cap) dst[w] = key;
                    w++;
                }
            }
        }
        r.Below = below;
        r.Inside = w;
        r.Overflow = w > cap;
        r.MaxKey = mx;
        return r;
    }

    /// <summary>
    /// One chunk of the bracket pass: counts keys below lo, equal to lo, equal to hi, and copies the
    /// keys strictly between lo and hi (branch-free left-pack), tracking the largest key.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static ChunkCounts CountBracket(uint* bits, long n, uint lo, uint hi, uint[] list)
    {
        var r = new ChunkCounts();
        long cap = list.Length - 8, w = 0, i = 0;
        uint mx = 0;
        // With lo == hi the "equal to hi" class must not count the same keys twice.
        int eqHiKey = lo == hi ? -1 : (int)hi;
        fixed (uint* dst = list)
        fixed (int* pack = PackTable)
        {
            if (Avx2.IsSupported && n >= 8)
            {
                // Keys are below 2^31, so signed compares order them correctly.
                var abs = Vector256.Create((int)MagnitudeKey.F32Mask);
                var vlo = Vector256.Create((int)lo);
                var vhi = Vector256.Create((int)hi);
                var veqHi = Vector256.Create(eqHiKey);
                var vmax = Vector256<int>.Zero;
                long blockEnd;
                for (; i <= n - 8; i = blockEnd)
                {
                    // Blocks of 2^20 vectors keep the per-lane counters far from overflow.
                    blockEnd = Math.Min(n - (n - i) % 8, i + 8L * (1 << 20));
                    Vector256<int> vBelow = default, vEqLo = default, vEqHi = default;
                    for (; i < blockEnd; i += 8)
                    {
                        var key = Vector256.Load((int*)(bits + i)) & abs;
                        vmax = Vector256.Max(vmax, key);
                        vBelow -= Vector256.LessThan(key, vlo);
                        vEqLo -= Vector256.Equals(key, vlo);
                        vEqHi -= Vector256.Equals(key, veqHi);
                        var inside = Vector256.GreaterThan(key, vlo) & Vector256.LessThan(key, vhi);
                        uint m = inside.ExtractMostSignificantBits();
                        if (w <= cap)
                            Avx2.PermuteVar8x32(key, Vector256.Load(pack + m * 8)).AsUInt32().Store(dst + w);
                        w += BitOperations.PopCount(m);
                    }
                    r.Below += Vector256.Sum(vBelow);
                    r.EqualLo += Vector256.Sum(vEqLo);
                    r.EqualHi += Vector256.Sum(vEqHi);
                }
                for (int l = 0; l < 8; l++) mx = Math.Max(mx, (uint)vmax.GetElement(l));
            }
            for (; i < n; i++)
            {
                uint key = bits[i] & MagnitudeKey.F32Mask;
                mx = Math.Max(mx, key);
                if (key < lo) r.Below++;
                else if (key == lo) r.EqualLo++;
                else if (key < hi)
                {
                    if (w <= cap) dst[w] = key;
                    w++;
                }
                else if ((int)key == eqHiKey) r.EqualHi++;
            }
        }
        r.Inside = w;
        r.Overflow = w > cap;
        r.MaxKey = mx;
        return r;
    }
}
