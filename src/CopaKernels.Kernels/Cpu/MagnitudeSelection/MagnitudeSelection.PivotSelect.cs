using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace CopaKernels.Kernels.Cpu;

// Family 1 on the CPU: the vectorised three-pivot quickselect on small key arrays.
// One concern of the partial class; its design and entry points are in MagnitudeSelection.cs.
internal static unsafe partial class MagnitudeSelection
{
    /// <summary>At or below this many keys <see cref="PivotSelect"/> sorts what is left.</summary>
    private const int PivotSmall = 32;

    /// <summary>
    /// The k-th smallest (1-based) of <paramref name="n"/> keys whose sign is already cleared, and how
    /// many are strictly below it: a vectorised three-pivot quickselect for the key arrays a selection
    /// makes itself (a sample, the keys a bracket copied). Each pass counts the keys below and at three
    /// pivots taken from the array (one vectorised pass, no branch on a key), then packs the class that
    /// holds the k-th to the front, in place and in order; a pass drops at least the pivots' keys, so it
    /// ends, and about three quarters of them on data in any order. Overwrites the array.
    /// </summary>
    /// <remarks>
    /// No branch depends on a key: a quickselect that branches on each comparison (Hoare's) mispredicts
    /// about half of those branches on keys in no particular order.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static uint PivotSelect(uint* keys, long n, long k, out long less)
    {
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k));
        long skipped = 0;
        Span<long> c = stackalloc long[6];
        while (n > PivotSmall)
        {
            uint q0 = keys[n / 4], q1 = keys[n / 2], q2 = keys[n - 1 - n / 4];
            if (q0 > q1) (q0, q1) = (q1, q0);
            if (q1 > q2) (q1, q2) = (q2, q1);
            if (q0 > q1) (q0, q1) = (q1, q0);
            // c = count(< q0), count(≤ q0), count(< q1), count(≤ q1), count(< q2), count(≤ q2).
            CountAtPivots(keys, n, q0, q1, q2, c);
            uint from, to;
            long skip;
            if (k <= c[0]) (from, to, skip) = (0, q0 - 1, 0);
            else if (k <= c[1]) { less = skipped + c[0]; return q0; }
            else if (k <= c[2]) (from, to, skip) = (q0 + 1, q1 - 1, c[1]);
            else if (k <= c[3]) { less = skipped + c[2]; return q1; }
            else if (k <= c[4]) (from, to, skip) = (q1 + 1, q2 - 1, c[3]);
            else if (k <= c[5]) { less = skipped + c[4]; return q2; }
            else (from, to, skip) = (q2 + 1, uint.MaxValue, c[5]);
            n = PackRange(keys, n, from, to);
            k -= skip;
            skipped += skip;
        }
        var rest = new Span<uint>(keys, (int)n);
        rest.Sort();
        uint t = rest[(int)k - 1];
        int below = (int)k - 1;
        while (below > 0 && rest[below - 1] == t) below--;
        less = skipped + below;
        return t;
    }

    /// <summary>c[0..6) = count(key &lt; q0), count(key ≤ q0), and the same for q1 and q2 (keys below 2^31).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void CountAtPivots(uint* keys, long n, uint q0, uint q1, uint q2, Span<long> c)
    {
        long i = 0;
        c.Clear();
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            var p0 = Vector512.Create(q0);
            var p1 = Vector512.Create(q1);
            var p2 = Vector512.Create(q2);
            var one = Vector512<uint>.One;
            Vector512<uint> l0 = default, e0 = default, l1 = default, e1 = default, l2 = default, e2 = default;
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load(keys + i);
                l0 = Vector512.ConditionalSelect(Vector512.LessThan(v, p0), l0 + one, l0);
                e0 = Vector512.ConditionalSelect(Vector512.LessThanOrEqual(v, p0), e0 + one, e0);
                l1 = Vector512.ConditionalSelect(Vector512.LessThan(v, p1), l1 + one, l1);
                e1 = Vector512.ConditionalSelect(Vector512.LessThanOrEqual(v, p1), e1 + one, e1);
                l2 = Vector512.ConditionalSelect(Vector512.LessThan(v, p2), l2 + one, l2);
                e2 = Vector512.ConditionalSelect(Vector512.LessThanOrEqual(v, p2), e2 + one, e2);
            }
            // Lanes count at most n/16 < 2^32 each; the sums are taken wide.
            c[0] = Wide(l0); c[1] = Wide(e0); c[2] = Wide(l1); c[3] = Wide(e1); c[4] = Wide(l2); c[5] = Wide(e2);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            // Keys are below 2^31: signed compares order them, and a true lane (−1) subtracted counts one.
            var p0 = Vector256.Create((int)q0);
            var p1 = Vector256.Create((int)q1);
            var p2 = Vector256.Create((int)q2);
            Vector256<int> l0 = default, e0 = default, l1 = default, e1 = default, l2 = default, e2 = default;
            for (; i <= n - 8; i += 8)
            {
                var v = Vector256.Load((int*)(keys + i));
                l0 -= Vector256.LessThan(v, p0);
                e0 -= Vector256.LessThanOrEqual(v, p0);
                l1 -= Vector256.LessThan(v, p1);
                e1 -= Vector256.LessThanOrEqual(v, p1);
                l2 -= Vector256.LessThan(v, p2);
                e2 -= Vector256.LessThanOrEqual(v, p2);
            }
            c[0] = Wide(l0.AsUInt32()); c[1] = Wide(e0.AsUInt32()); c[2] = Wide(l1.AsUInt32());
            c[3] = Wide(e1.AsUInt32()); c[4] = Wide(l2.AsUInt32()); c[5] = Wide(e2.AsUInt32());
        }
        for (; i < n; i++)
        {
            uint v = keys[i];
            c[0] += v < q0 ? 1 : 0;
            c[1] += v <= q0 ? 1 : 0;
            c[2] += v < q1 ? 1 : 0;
            c[3] += v <= q1 ? 1 : 0;
            c[4] += v < q2 ? 1 : 0;
            c[5] += v <= q2 ? 1 : 0;
        }
    }

    private static long Wide(Vector512<uint> v) => (long)Vector512.Sum(Vector512.WidenLower(v) + Vector512.WidenUpper(v));

    private static long Wide(Vector256<uint> v) => (long)Vector256.Sum(Vector256.WidenLower(v) + Vector256.WidenUpper(v));

    /// <summary>
    /// Packs the keys in [from, to] to the front of the array, in order, and returns how many there are.
    /// In place: a vector is loaded before anything is stored over it, and the write position never passes
    /// the read position.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static long PackRange(uint* keys, long n, uint from, uint to)
    {
        long w = 0, i = 0;
        uint span = to - from;
        if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported && n >= 16)
        {
            var vfrom = Vector512.Create(from);
            var vspan = Vector512.Create(span);
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load(keys + i);
                // In [from, to] as one unsigned compare: key − from ≤ to − from (wraps for key < from).
                var keep = Vector512.LessThanOrEqual(v - vfrom, vspan);
                Avx512F.Compress(Vector512<uint>.Zero, keep, v).Store(keys + w);
                w += BitOperations.PopCount(keep.ExtractMostSignificantBits());
            }
        }
        else if (Avx2.IsSupported && n >= 8)
        {
            var vfrom = Vector256.Create(from);
            var vspan = Vector256.Create(span);
            fixed (int* pack = PackTable)
            {
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.Load(keys + i);
                    uint m = Vector256.LessThanOrEqual(v - vfrom, vspan).ExtractMostSignificantBits();
                    Avx2.PermuteVar8x32(v.AsInt32(), Vector256.Load(pack + m * 8)).AsUInt32().Store(keys + w);
                    w += BitOperations.PopCount(m);
                }
            }
        }
        for (; i < n; i++)
        {
            uint v = keys[i];
            keys[w] = v;
            w += v - from <= span ? 1 : 0;
        }
        return w;
    }
}
