using System.Buffers;
using System.Runtime.CompilerServices;

namespace CopaKernels.Kernels.Cpu;

// Family 1 on the CPU: the exact radix-select fallback.
// One concern of the partial class; its design and entry points are in MagnitudeSelection.cs.
internal static unsafe partial class MagnitudeSelection
{
    [ThreadStatic] private static uint[]? t_histogram;

    /// <summary>
    /// The k-th smallest key (1-based) of the n values at <paramref name="bits"/> (sign ignored), and
    /// how many keys are strictly below it. <paramref name="finite"/> is false if any key is Inf/NaN.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static uint RadixSelect(uint* bits, long n, long k, out long less, out bool finite)
    {
        var h = t_histogram ??= new uint[4 * 2048];
        Array.Clear(h);
        fixed (uint* h0 = h)
        {
            uint* h1 = h0 + 2048, h2 = h0 + 4096, h3 = h0 + 6144;
            long i = 0;
            for (; i + 4 <= n; i += 4)
            {
                h0[(bits[i] & MagnitudeKey.F32Mask) >> 20]++;
                h1[(bits[i + 1] & MagnitudeKey.F32Mask) >> 20]++;
                h2[(bits[i + 2] & MagnitudeKey.F32Mask) >> 20]++;
                h3[(bits[i + 3] & MagnitudeKey.F32Mask) >> 20]++;
            }
            for (; i < n; i++) h0[(bits[i] & MagnitudeKey.F32Mask) >> 20]++;
            for (int b = 0; b < 2048; b++) h0[b] += h1[b] + h2[b] + h3[b];
            // Any key in the buckets from 0x7F8 up is Inf or NaN.
            for (int b = (int)(MagnitudeKey.F32Infinity >> 20); b < 2048; b++)
                if (h0[b] != 0) { finite = false; less = 0; return 0; }
            finite = true;
            int b1 = FindBucket(h0, 2048, k, out long below1);
            long m = h0[b1];
            // Copy out the keys of bucket b1: typically a small fraction of n. Small copies reuse a
            // per-thread buffer; big ones (the rare fallback on a huge tensor) are pooled and returned,
            // so no thread keeps hundreds of megabytes alive after the call.
            var rented = m + 1 > ThreadScratchLimit ? ArrayPool<uint>.Shared.Rent((int)(m + 1)) : null;
            Span<uint> scratch = rented != null ? rented : Scratch(m);
            try
            {
                fixed (uint* s = scratch)
                {
                    long w = 0;
                    uint want = (uint)b1;
                    for (long j = 0; j < n; j++)
                    {
                        uint key = bits[j] & MagnitudeKey.F32Mask;
                        s[w] = key;
                        w += (key >> 20) == want ? 1 : 0;
                    }
                    uint result = SelectInBucket(s, m, k - below1, out long less2);
                    less = below1 + less2;
                    return result;
                }
            }
            finally
            {
                if (rented != null) ArrayPool<uint>.Shared.Return(rented);
            }
        }
    }

    /// <summary>Largest bucket copy kept in the per-thread scratch buffer (4 MiB).</summary>
    private const long ThreadScratchLimit = 1 << 20;

    /// <summary>Finishes a radix select on keys that share their top digit: digits 2 (bits 19..9) and 3 (bits 8..0).</summary>
    private static uint SelectInBucket(uint* s, long m, long k, out long less)
    {
        if (m <= 32)
        {
            var small = new Span<uint>(s, (int)m);
            small.Sort();
            uint v = small[(int)k - 1];
            less = 0;
            while (less < m && small[(int)less] < v) less++;
            return v;
        }
        Span<uint> h = stackalloc uint[2048];
        h.Clear();
        for (long j = 0; j < m; j++) h[(int)((s[j] >> 9) & 0x7FF)]++;
        int b2;
        long below2;
        fixed (uint* hp = h) b2 = FindBucket(hp, 2048, k, out below2);
        h.Clear();
        for (long j = 0; j < m; j++)
            if (((s[j] >> 9) & 0x7FF) == (uint)b2) h[(int)(s[j] & 0x1FF)]++;
        int b3;
        long below3;
        fixed (uint* hp = h) b3 = FindBucket(hp, 512, k - below2, out below3);
        less = below2 + below3;
        return (s[0] & ~0xFFFFFu) | ((uint)b2 << 9) | (uint)b3;
    }

    private static int FindBucket(uint* h, int buckets, long k, out long below)
    {
        long cum = 0;
        for (int b = 0; b < buckets; b++)
        {
            if (cum + h[b] >= k) { below = cum; return b; }
            cum += h[b];
        }
        throw new InvalidOperationException("rank beyond histogram total");
    }
}
