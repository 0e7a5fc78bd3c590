using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;
using System.Runtime.Intrinsics;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// Family 1 on 16-bit float storage (BF16 or F16 bits as they lie in a safetensors file): the exact
/// k-th smallest |x| and the keep-mask, without widening to F32 first.
/// </summary>
/// <remarks>
/// The key of a value is its bits with the sign cleared. For both formats (sign, exponent, mantissa)
/// the unsigned order of keys is the order of |x|, +0 and −0 share key 0, and keys from the format's
/// infinity pattern up are ±Inf or NaN. Widening to F32 is exact and monotone, so the threshold is the
/// F32 path's threshold bit for bit and the mask is the same mask.
/// <para>
/// A 15-bit key has at most 32,768 values, which makes a key-space search cheap: a sample of 256
/// keys brackets the k-th in [lo, hi]; one vectorised pass counts the keys below lo and below hi + 1
/// (and takes the largest key, for the Inf/NaN check; with AVX-512 VBMI2 it also packs the keys in
/// [lo, hi] into a scratch, so the passes after it read only those); then each further pass counts
/// the keys below three points of [lo, hi] and keeps the quarter that holds the k-th, until one key
/// is left. A pass
/// reads 2 bytes per value and costs one compare and one masked add per 32 values and point (AVX-512)
/// or per 16 (AVX2); a LoRA factor needs 4–5 of them, from L2. If the sample's bracket missed, the
/// first pass says so and the search starts from the whole key range instead: exact either way.
/// </para>
/// </remarks>
internal static unsafe class MagnitudeSelection16
{
    /// <summary>Sampled keys: a bracket of ±4σ of the sample rank holds about a fifth of the keys.</summary>
    private const int SampleCount = 256;

    /// <summary>The first key that is ±Inf or NaN in <paramref name="format"/>.</summary>
    internal static uint InfKey(DType format) => format == DType.BF16 ? NonFinite.Bf16Infinity : NonFinite.F16Infinity;

    /// <summary>The value of key <paramref name="key"/> (|x|) as F32: exact.</summary>
    internal static float Widen(uint key, DType format) =>
        format == DType.BF16 ? BitConverter.UInt32BitsToSingle(key << 16) : (float)BitConverter.UInt16BitsToHalf((ushort)key);

    /// <summary>The selection; tests may force the bracket to exercise its miss paths.</summary>
    public static SelectionResult Select(ushort* p, int n, long k, DType format, bool applyMask, out bool finite,
        (uint Lo, uint Hi)? forcedBracket = null)
    {
        uint inf = InfKey(format);
        Span<uint> points = stackalloc uint[3];
        Span<long> below = stackalloc long[3];
        if (k == 0)
        {
            finite = CountBelow(p, n, points, below, 0) < inf;
            return new SelectionResult(0, 0f, n);
        }
        var (lo, hi) = forcedBracket ?? Bracket(p, n, k);
        // Invariant from here on: count(key < lo) = less < k ≤ count(key < hi + 1), so lo ≤ t ≤ hi.
        // Where AVX-512 can pack 16-bit lanes, the first pass also copies the keys in [lo, hi] out, so
        // the search passes after it read those (a fifth of the values, typically), not all n.
        uint max;
        if (Vector512.IsHardwareAccelerated && Avx512Vbmi2.IsSupported && n >= 64)
        {
            var scratch = ThreadScratch.Get(ref t_candidates, n + 32, 4096);
            fixed (ushort* dst = scratch)
            {
                int collected;
                (below[0], below[1], max, collected) = CountAndCollect(p, n, lo, hi, dst);
                finite = max < inf;
                if (!finite) return default;
                if (below[0] < k && k <= below[1])
                    return Finish(p, n, k, format, applyMask, dst, collected, below[0], lo, hi);
            }
        }
        else
        {
            points[0] = lo;
            points[1] = hi + 1;
            max = CountBelow(p, n, points, below, 2);
            finite = max < inf;
            if (!finite) return default;
        }
        long less = below[0];
        if (below[0] >= k) (lo, less) = (0, 0);
        if (below[1] < k) hi = max;
        (lo, less) = Search(p, n, k, 0, lo, hi, less);
        long kept = applyMask ? Mask(p, p, n, lo) : n - less;
        return new SelectionResult(k, Widen(lo, format), kept);
    }

    [ThreadStatic] private static ushort[]? t_candidates;

    /// <summary>The search on the keys a hit bracket collected, then the mask on the whole tensor.</summary>
    private static SelectionResult Finish(ushort* p, int n, long k, DType format, bool applyMask,
        ushort* candidates, int count, long belowLo, uint lo, uint hi)
    {
        var (t, less) = Search(candidates, count, k, belowLo, lo, hi, belowLo);
        long kept = applyMask ? Mask(p, p, n, t) : n - less;
        return new SelectionResult(k, Widen(t, format), kept);
    }

    /// <summary>
    /// Narrows [lo, hi] to the k-th smallest key. Counts over <paramref name="keys"/> are offset by
    /// <paramref name="offset"/> (the keys below them that are not in the array); <paramref name="less"/>
    /// is count(key &lt; lo) on entry, and on return count(key &lt; t).
    /// </summary>
    private static (uint T, long Less) Search(ushort* keys, int length, long k, long offset, uint lo, uint hi, long less)
    {
        Span<uint> points = stackalloc uint[3];
        Span<long> below = stackalloc long[3];
        while (hi > lo)
        {
            // Up to three points strictly inside (lo, hi], spread evenly: the k-th is below the first
            // point whose count reaches k, and at or above the last one whose count stays under it.
            uint span = hi - lo;
            int count = (int)Math.Min(3u, span);
            for (int i = 0; i < count; i++)
                points[i] = lo + 1 + (uint)((ulong)(span - 1) * (ulong)(i + 1) / (ulong)(count + 1));
            CountBelow(keys, length, points, below, count);
            uint newLo = lo, newHi = hi;
            long newLess = less;
            for (int i = 0; i < count; i++)
            {
                long b = below[i] + offset;
                if (b < k)
                {
                    if (points[i] > newLo) (newLo, newLess) = (points[i], b);
                }
                else if (points[i] - 1 < newHi) newHi = points[i] - 1;
            }
            (lo, hi, less) = (newLo, newHi, newLess);
        }
        return (lo, less);
    }

    /// <summary>
    /// The first pass with AVX-512 VBMI2: count(key &lt; lo), count(key &lt; hi + 1), the largest key, and
    /// the keys in [lo, hi] packed into <paramref name="dst"/> (room for n + 32).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (long BelowLo, long BelowHi1, uint Max, int Collected) CountAndCollect(ushort* p, int n, uint lo, uint hi, ushort* dst)
    {
        var abs = Vector512.Create(MagnitudeKey.Half16Mask);
        var one = Vector512<ushort>.One;
        var vlo = Vector512.Create((ushort)lo);
        var vspan = Vector512.Create((ushort)(hi - lo));
        var vmax = Vector512<ushort>.Zero;
        long cLo = 0, cIn = 0;
        int w = 0, i = 0;
        while (i <= n - 32)
        {
            int end = (int)Math.Min(n - 31L, i + 32L * 32768);
            Vector512<ushort> a0 = default, a1 = default;
            for (; i < end; i += 32)
            {
                var key = Vector512.Load(p + i) & abs;
                vmax = Vector512.Max(vmax, key);
                a0 = Vector512.ConditionalSelect(Vector512.LessThan(key, vlo), a0 + one, a0);
                // In [lo, hi] as one unsigned compare: key − lo ≤ hi − lo (wraps for key < lo).
                var inside = Vector512.LessThanOrEqual(key - vlo, vspan);
                a1 = Vector512.ConditionalSelect(inside, a1 + one, a1);
                Avx512Vbmi2.Compress(Vector512<ushort>.Zero, inside, key).Store(dst + w);
                w += BitOperations.PopCount(inside.ExtractMostSignificantBits());
            }
            cLo += Total(a0);
            cIn += Total(a1);
        }
        uint max = Math.Max(MaxLane(vmax.GetLower()), MaxLane(vmax.GetUpper()));
        for (; i < n; i++)
        {
            uint key = MagnitudeKey.OfBits16(p[i]);
            max = Math.Max(max, key);
            if (key < lo) cLo++;
            else if (key <= hi)
            {
                cIn++;
                dst[w++] = (ushort)key;
            }
        }
        return (cLo, cLo + cIn, max, w);
    }

    /// <summary>
    /// Keys lo ≤ hi that hold the k-th smallest between them with high probability: two order
    /// statistics of a deterministic stratified sample (one key per stratum, at a hashed position).
    /// </summary>
    private static (uint Lo, uint Hi) Bracket(ushort* p, int n, long k)
    {
        int m = Math.Min(n, SampleCount);
        uint* sample = stackalloc uint[m];
        long stride = n / m;
        for (int j = 0; j < m; j++) sample[j] = MagnitudeKey.OfBits16(p[j * stride + MagnitudeSelection.StratumOffset(j, stride)]);
        return MagnitudeSelection.SampleBracket(new ReadOnlySpan<uint>(sample, m), n, k, 4, 2, MagnitudeKey.Half16Mask);
    }

    /// <summary>
    /// One pass: below[i] = count of keys &lt; points[i] for the first <paramref name="count"/> points
    /// (each ≤ 0x8000), and the largest key. Lane counters are 16-bit, so they are folded into the
    /// totals every 32,768 vectors.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static uint CountBelow(ushort* p, int n, ReadOnlySpan<uint> points, Span<long> below, int count)
    {
        // Unused points count nothing: no key is below 0.
        uint q0 = count > 0 ? points[0] : 0, q1 = count > 1 ? points[1] : 0, q2 = count > 2 ? points[2] : 0;
        long c0 = 0, c1 = 0, c2 = 0;
        uint max = 0;
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var abs = Vector512.Create(MagnitudeKey.Half16Mask);
            var one = Vector512<ushort>.One;
            // A point of 0x8000 is above every key; as a 16-bit lane it compares correctly unsigned.
            var t0 = Vector512.Create((ushort)q0);
            var t1 = Vector512.Create((ushort)q1);
            var t2 = Vector512.Create((ushort)q2);
            var vmax = Vector512<ushort>.Zero;
            while (i <= n - 32)
            {
                int end = (int)Math.Min(n - 31L, i + 32L * 32768);
                Vector512<ushort> a0 = default, a1 = default, a2 = default;
                for (; i < end; i += 32)
                {
                    var key = Vector512.Load(p + i) & abs;
                    vmax = Vector512.Max(vmax, key);
                    // Masked adds (vpaddw under the compare's k-mask), not subtracting the compare: that
                    // would first turn the k-mask into a vector.
                    a0 = Vector512.ConditionalSelect(Vector512.LessThan(key, t0), a0 + one, a0);
                    a1 = Vector512.ConditionalSelect(Vector512.LessThan(key, t1), a1 + one, a1);
                    a2 = Vector512.ConditionalSelect(Vector512.LessThan(key, t2), a2 + one, a2);
                }
                c0 += Total(a0);
                c1 += Total(a1);
                c2 += Total(a2);
            }
            max = Math.Max(MaxLane(vmax.GetLower()), MaxLane(vmax.GetUpper()));
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var abs = Vector256.Create(MagnitudeKey.Half16Mask);
            var t0 = Vector256.Create((ushort)q0);
            var t1 = Vector256.Create((ushort)q1);
            var t2 = Vector256.Create((ushort)q2);
            var vmax = Vector256<ushort>.Zero;
            while (i <= n - 16)
            {
                int end = (int)Math.Min(n - 15L, i + 16L * 32768);
                Vector256<ushort> a0 = default, a1 = default, a2 = default;
                for (; i < end; i += 16)
                {
                    var key = Vector256.Load(p + i) & abs;
                    vmax = Vector256.Max(vmax, key);
                    // A true compare lane is all ones (−1): subtracting it counts one.
                    a0 -= Vector256.LessThan(key, t0);
                    a1 -= Vector256.LessThan(key, t1);
                    a2 -= Vector256.LessThan(key, t2);
                }
                c0 += Total(a0);
                c1 += Total(a1);
                c2 += Total(a2);
            }
            max = MaxLane(vmax);
        }
        for (; i < n; i++)
        {
            uint key = MagnitudeKey.OfBits16(p[i]);
            max = Math.Max(max, key);
            if (key < q0) c0++;
            if (key < q1) c1++;
            if (key < q2) c2++;
        }
        if (count > 0) below[0] = c0;
        if (count > 1) below[1] = c1;
        if (count > 2) below[2] = c2;
        return max;
    }

    /// <summary>
    /// dst = src with every value of key &lt; t zeroed (+0), returning how many were kept; src and dst may be
    /// the same memory (in-place trim) or apart (a trimmed copy of read-only values).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static long Mask(ushort* src, ushort* dst, int n, uint t)
    {
        long kept = 0;
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var abs = Vector512.Create(MagnitudeKey.Half16Mask);
            var vt = Vector512.Create((ushort)t);
            for (; i <= n - 32; i += 32)
            {
                var v = Vector512.Load(src + i);
                var keep = Vector512.GreaterThanOrEqual(v & abs, vt);
                (v & keep).Store(dst + i);
                kept += BitOperations.PopCount(keep.ExtractMostSignificantBits());
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var abs = Vector256.Create(MagnitudeKey.Half16Mask);
            var vt = Vector256.Create((ushort)t);
            for (; i <= n - 16; i += 16)
            {
                var v = Vector256.Load(src + i);
                var keep = Vector256.GreaterThanOrEqual(v & abs, vt);
                (v & keep).Store(dst + i);
                kept += BitOperations.PopCount(keep.ExtractMostSignificantBits());
            }
        }
        for (; i < n; i++)
        {
            ushort v = src[i];
            bool keep = MagnitudeKey.OfBits16(v) >= t;
            dst[i] = keep ? v : (ushort)0;
            if (keep) kept++;
        }
        return kept;
    }

    private static long Total(Vector512<ushort> v)
    {
        var (lo, hi) = Vector512.Widen(v);
        return Vector512.Sum(lo + hi);
    }

    private static long Total(Vector256<ushort> v)
    {
        var (lo, hi) = Vector256.Widen(v);
        return Vector256.Sum(lo + hi);
    }

    private static uint MaxLane(Vector256<ushort> v)
    {
        uint m = 0;
        for (int l = 0; l < Vector256<ushort>.Count; l++) m = Math.Max(m, v.GetElement(l));
        return m;
    }
}
