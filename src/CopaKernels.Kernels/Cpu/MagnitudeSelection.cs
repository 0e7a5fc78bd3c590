using System.Buffers;
using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// Family 1 on the CPU: the exact k-th smallest |x| and the keep-mask |x| ≥ t (SEMANTICS §1).
/// </summary>
/// <remarks>
/// Everything works on keys: the float bits with the sign cleared. For non-negative IEEE floats the
/// unsigned (and, below 2^31, the signed) integer order of the bits is the numeric order, so the
/// k-th smallest key is the k-th smallest |x|, +0 and −0 are the same key, and a key ≥ 0x7F800000
/// is ±Inf or NaN. One exact algorithm, with two ways to sample:
/// <list type="bullet">
/// <item>A deterministic sample (one key per stratum, at a hashed offset) brackets the k-th key in
/// [lo, hi]: two order statistics of the sample, found by <see cref="PivotSelect"/>. Below
/// <see cref="LargeThreshold"/> keys (a LoRA factor) the sample is taken while the tensor is read
/// once in order, which brings it into cache; above it the threads gather the sample.</item>
/// <item>One vectorised read pass (multi-threaded on a large tensor) counts the keys below lo and
/// copies the few inside the bracket; <see cref="PivotSelect"/> finishes on that copy (a large copy
/// goes through these steps again, with the threads). If the bracket missed (rare), a radix select
/// with 11-, 11- and 9-bit digits runs on the whole tensor. Either way the result is exact; the
/// sample only decides the speed.</item>
/// </list>
/// The mask is one more vectorised pass (read and write). Nothing is sorted.
/// </remarks>
internal static unsafe class MagnitudeSelection
{
    private const uint AbsMask = 0x7FFF_FFFF;
    private const uint InfKey = 0x7F80_0000;

    /// <summary>Tensors at least this long take the sampled-bracket path (measured crossover; see bench).</summary>
    internal const long LargeThreshold = 1 << 18;

    private const int SampleCount = 16384;

    [ThreadStatic] private static uint[]? t_scratch;
    [ThreadStatic] private static uint[]? t_histogram;

    public static SelectionResult Select(CpuBackend backend, CpuBuffer x, TensorRange range, double density, bool applyMask)
    {
        float* p = x.Floats(range.Offset);
        long n = range.Length;
        long k = SelectionResult.KFor(n, density);
        var r = SelectTensor(n >= LargeThreshold ? backend : null, p, n, k, applyMask, out bool finite);
        if (!finite) throw new NonFiniteInputException(0);
        return r;
    }

    public static void SelectBatched(CpuBackend backend, CpuBuffer x, ReadOnlySpan<TensorRange> ranges, double density, Span<SelectionResult> results, bool applyMask)
    {
        int count = ranges.Length;
        var local = new SelectionResult[count];
        var bad = new bool[count];
        var rangesArray = ranges.ToArray();
        var large = new List<int>();
        for (int i = 0; i < count; i++) if (rangesArray[i].Length >= LargeThreshold) large.Add(i);
        // Small tensors: one tensor per task, spread over the threads (dynamic partitioning balances
        // 16×4096 A's against 14336×16 B's).
        var floats = x.Floats(0);
        var f = (nint)floats;
        System.Threading.Tasks.Parallel.For(0, count, backend.Parallel, i =>
        {
            var rg = rangesArray[i];
            if (rg.Length >= LargeThreshold) return;
            local[i] = SelectTensor(null, (float*)f + rg.Offset, rg.Length, SelectionResult.KFor(rg.Length, density), applyMask, out var finite);
            bad[i] = !finite;
        });
        // Large tensors: each uses every thread on its own.
        foreach (var i in large)
        {
            var rg = rangesArray[i];
            local[i] = SelectTensor(backend, floats + rg.Offset, rg.Length, SelectionResult.KFor(rg.Length, density), applyMask, out var finite);
            bad[i] = !finite;
        }
        int first = Array.IndexOf(bad, true);
        if (first >= 0) throw new NonFiniteInputException(first);
        local.CopyTo(results);
    }

    // ---------------------------------------------------------------- one tensor

    /// <summary>
    /// The selection of one tensor: its threshold (<see cref="SelectKeys"/>) and, with
    /// <paramref name="applyMask"/>, the mask; on the calling thread without <paramref name="backend"/>,
    /// else every pass on its threads. Tests may force the bracket to exercise its miss paths.
    /// </summary>
    internal static SelectionResult SelectTensor(CpuBackend? backend, float* p, long n, long k, bool applyMask, out bool finite,
        (uint Lo, uint Hi)? forcedBracket = null)
    {
        if (k == 0)
        {
            finite = (backend == null ? MaxKey((uint*)p, n) : ParallelMaxKey(backend, (uint*)p, n)) < InfKey;
            return new SelectionResult(0, 0f, n);
        }
        uint t = SelectKeys((uint*)p, n, k, backend, out long less, out finite, forcedBracket);
        if (!finite) return default;
        long kept = !applyMask ? n - less : backend == null ? Mask(p, n, t) : ParallelMask(backend, p, n, t);
        return new SelectionResult(k, BitConverter.UInt32BitsToSingle(t), kept);
    }

    // ---------------------------------------------------------------- radix select (the exact fallback)

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
                h0[(bits[i] & AbsMask) >> 20]++;
                h1[(bits[i + 1] & AbsMask) >> 20]++;
                h2[(bits[i + 2] & AbsMask) >> 20]++;
                h3[(bits[i + 3] & AbsMask) >> 20]++;
            }
            for (; i < n; i++) h0[(bits[i] & AbsMask) >> 20]++;
            for (int b = 0; b < 2048; b++) h0[b] += h1[b] + h2[b] + h3[b];
            // Any key in the buckets from 0x7F8 up is Inf or NaN.
            for (int b = (int)(InfKey >> 20); b < 2048; b++)
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
                        uint key = bits[j] & AbsMask;
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

    /// <summary>This thread's key scratch, m + 1 long.</summary>
    private static Span<uint> Scratch(long m) => ThreadScratch.Get(ref t_scratch, (int)m + 1, 1024);

    // ---------------------------------------------------------------- sampled bracket

    /// <summary>
    /// The k-th smallest key (1-based) of the n values at <paramref name="bits"/> (sign ignored), without
    /// modifying them, and how many keys are strictly below it; <paramref name="finite"/> is false if any
    /// key is Inf/NaN (the result then means nothing). Up to <see cref="SmallSelect"/> keys:
    /// <see cref="PivotSelect"/> on a copy. Else a sampled bracket, one counting pass that copies the keys
    /// inside it (chunked over <paramref name="backend"/>'s threads when given), and the k-th among those
    /// (<see cref="TryResolve"/>); a radix select over all keys when the bracket missed.
    /// </summary>
    internal static uint SelectKeys(uint* bits, long n, long k, CpuBackend? backend, out long less, out bool finite,
        (uint Lo, uint Hi)? forcedBracket = null)
    {
        if (n <= SmallSelect && forcedBracket == null)
        {
            // 4096 keys: 3.7 µs against 8.1 for the radix select, whose histograms alone are 32 KB to clear.
            var keys = Scratch(n);
            TensorPrimitives.BitwiseAnd(new ReadOnlySpan<uint>(bits, (int)n), AbsMask, keys);
            finite = TensorPrimitives.Max<uint>(keys[..(int)n]) < InfKey;
            if (!finite) { less = 0; return 0; }
            fixed (uint* c = keys) return PivotSelect(c, n, k, out less);
        }
        bool tieHeavy = false;
        uint maxKey = 0;
        var (lo, hi) = forcedBracket ?? Bracket(bits, n, k, out tieHeavy, out maxKey, backend);
        if (maxKey >= InfKey) { less = 0; finite = false; return 0; }
        var pass = BracketPass(backend, bits, n, lo, hi, inclusive: !tieHeavy);
        if (pass.Counts.Overflow && pass.Counts.MaxKey < InfKey && !tieHeavy)
        {
            // The bracket's ends held more keys than the sample showed: count them apart instead.
            ArrayPool<uint>.Shared.Return(pass.Candidates);
            pass = BracketPass(backend, bits, n, lo, hi, inclusive: false);
        }
        try
        {
            finite = pass.Counts.MaxKey < InfKey;
            if (!finite) { less = 0; return 0; }
            fixed (uint* c = pass.Candidates)
                if (TryResolve(pass.Counts, lo, hi, c, k, out uint t, out less, backend)) return t;
            // The sample missed (or the bracket held too many keys): exact all the same, at the cost of a
            // full radix select.
            return RadixSelect(bits, n, k, out less, out _);
        }
        finally
        {
            ArrayPool<uint>.Shared.Return(pass.Candidates);
        }
    }

    /// <summary>Up to this many keys a select on a copy of them all beats sampling.</summary>
    private const long SmallSelect = 4096;

    /// <summary>
    /// Places the k-th key among the classes of a bracket pass (&lt; lo, = lo, strictly inside, = hi,
    /// &gt; hi) and finishes inside; false when it is outside the bracket (or the copy overflowed).
    /// An inside of <see cref="LargeThreshold"/> keys or more goes through <see cref="SelectKeys"/> again (with
    /// <paramref name="backend"/>'s threads, when given).
    /// </summary>
    private static bool TryResolve(in ChunkCounts c, uint lo, uint hi, uint* candidates, long k, out uint t, out long less,
        CpuBackend? backend = null)
    {
        long r = k - c.Below;
        if (r >= 1 && r <= c.EqualLo)
        {
            t = lo;
            less = c.Below;
            return true;
        }
        if (r > c.EqualLo && r <= c.EqualLo + c.Inside && !c.Overflow)
        {
            t = c.Inside < LargeThreshold ? PivotSelect(candidates, c.Inside, r - c.EqualLo, out less)
                : SelectKeys(candidates, c.Inside, r - c.EqualLo, backend, out less, out _);
            less += c.Below + c.EqualLo;
            return true;
        }
        if (r > c.EqualLo + c.Inside && r <= c.EqualLo + c.Inside + c.EqualHi)
        {
            t = hi;
            less = c.Below + c.EqualLo + c.Inside;
            return true;
        }
        t = 0;
        less = 0;
        return false;
    }

    /// <summary>
    /// Keys lo ≤ hi that hold the k-th smallest between them with high probability, from a
    /// deterministic sample: one key from each of m strata, at a hashed position inside the stratum.
    /// </summary>
    internal static (uint Lo, uint Hi) Bracket(uint* bits, long n, long k) => Bracket(bits, n, k, out _);

    /// <summary>
    /// <see cref="Bracket(uint*, long, long)"/>; <paramref name="tieHeavy"/> says whether lo or hi recur
    /// in the sample (over 1% of it): then many keys equal an end of the bracket, and the pass that
    /// counts them apart (<see cref="CountBracket"/>) beats the one that copies them (<see cref="CountInclusive"/>).
    /// With <paramref name="backend"/> and a large tensor the sample is gathered by its threads, the same
    /// sample as on one thread.
    /// </summary>
    internal static (uint Lo, uint Hi) Bracket(uint* bits, long n, long k, out bool tieHeavy, CpuBackend? backend = null) =>
        Bracket(bits, n, k, out tieHeavy, out _, backend);

    /// <summary>
    /// <see cref="Bracket(uint*, long, long, out bool, CpuBackend?)"/>; below <see cref="LargeThreshold"/>
    /// keys the sample is taken while streaming over the whole tensor (<see cref="StreamGather"/>), and
    /// <paramref name="maxKey"/> is the largest key (else 0: not known).
    /// </summary>
    private static (uint Lo, uint Hi) Bracket(uint* bits, long n, long k, out bool tieHeavy, out uint maxKey, CpuBackend? backend = null)
    {
        int m = (int)Math.Min(n, Math.Clamp(n / 64, 1024, SampleCount));
        // Pooled: a batch of LoRA factors takes one sample each.
        var sample = ArrayPool<uint>.Shared.Rent(m);
        try
        {
            maxKey = GatherSample(bits, n, sample, m, backend);
            // ±4.5σ of the sample rank of the k-th key, plus slack for the stratification.
            var (lo, hi) = SampleBracket(sample.AsSpan(0, m), n, k, 4.5, 4, InfKey - 1);
            int ends = 0;
            for (int j = 0; j < m; j++) if (sample[j] == lo || sample[j] == hi) ends++;
            tieHeavy = ends > m / 100 + 2;
            return (lo, hi);
        }
        finally
        {
            ArrayPool<uint>.Shared.Return(sample);
        }
    }

    /// <summary>
    /// The m keys of the sample into sample[0..m): streamed below <see cref="LargeThreshold"/> keys (and
    /// the largest key returned), else gathered (by the backend's threads when it has several; 0 returned).
    /// </summary>
    private static uint GatherSample(uint* bits, long n, uint[] sample, int m, CpuBackend? backend)
    {
        long stride = n / m;
        if (n < LargeThreshold) return StreamGather(bits, n, stride, sample, m);
        if (backend is { Threads: > 1 })
        {
            // Each sample is a cache (and TLB) miss of its own: the threads share the strata out. Eight parts
            // a thread, so that the calling thread goes on taking parts while a sleeping worker wakes up
            // (after an idle spell that took up to 0.2 ms here; with one part each the caller waited for it).
            var b = (nint)bits;
            int parts = backend.Threads * 8;
            System.Threading.Tasks.Parallel.For(0, parts, backend.Parallel, part =>
                Gather((uint*)b, stride, sample, (int)((long)m * part / parts), (int)((long)m * (part + 1) / parts)));
        }
        else Gather(bits, stride, sample, 0, m);
        return 0;
    }

    /// <summary>
    /// The same sample as <see cref="Gather"/>, taken block by block while the whole tensor is read in
    /// order (for its largest key): a tensor that is not in cache arrives at the speed of a sequential
    /// read, where the sample's scattered reads alone each waited for memory. 448 LoRA factors (one
    /// thread, from memory): sampling took 15.7 ms scattered, against 9.2 ms for a read pass and then
    /// the same sample from cache; and the passes after it find the tensor in cache.
    /// </summary>
    private static uint StreamGather(uint* bits, long n, long stride, uint[] sample, int m)
    {
        const long Block = 4096;
        int j = 0;
        uint max = 0;
        for (long start = 0; start < n; start += Block)
        {
            long end = Math.Min(n, start + Block);
            max = Math.Max(max, MaxKey(bits + start, end - start));
            // The strata that end in what has been read: their keys are in L1.
            int upTo = (int)Math.Min(m, end / stride);
            Gather(bits, stride, sample, j, upTo);
            j = upTo;
        }
        return max;
    }

    /// <summary>Samples of strata [from, to): stratum j's key at a hashed offset inside it.</summary>
    private static void Gather(uint* bits, long stride, uint[] sample, int from, int to)
    {
        for (int j = from; j < to; j++) sample[j] = bits[j * stride + StratumOffset(j, stride)] & AbsMask;
    }

    /// <summary>
    /// Where stratum j (of <paramref name="stride"/> values) is sampled: a hashed offset in [0, stride), the
    /// high half of hash × stride (a multiply, where a modulo cost a 64-bit division per sample: 12 µs of a
    /// 65K-value factor's 58). Shared by the F32 and 16-bit selections.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static long StratumOffset(int j, long stride) =>
        (long)Math.BigMul(j < StrataHashes.Length ? StrataHashes[j] : Mix((ulong)j), (ulong)stride, out _);

    /// <summary>The hashes of the first <see cref="SampleCount"/> strata, so a sample costs a load and a multiply (9 cycles a key with the hash computed: 6 of a 229K-key factor's 14 µs sampling pass).</summary>
    private static readonly ulong[] StrataHashes = Enumerable.Range(0, SampleCount).Select(j => Mix((ulong)j)).ToArray();

    /// <summary>
    /// The bracket rule of both selections: two order statistics of a sample of m keys (found by
    /// <see cref="PivotSelect"/> on copies; the sample is left as it was) at the sample rank of the k-th
    /// smallest of n keys ± (<paramref name="sigmas"/>·σ + <paramref name="slack"/>); 0 below the sample,
    /// <paramref name="top"/> above it (and at most top).
    /// </summary>
    internal static (uint Lo, uint Hi) SampleBracket(ReadOnlySpan<uint> sample, long n, long k, double sigmas, int slack, uint top)
    {
        int m = sample.Length;
        double q = (double)k / n;
        double center = q * m, delta = sigmas * Math.Sqrt(m * q * (1 - q)) + slack;
        int loIdx = (int)Math.Floor(center - delta), hiIdx = (int)Math.Ceiling(center + delta);
        uint lo = 0, hi = top;
        var copy = ArrayPool<uint>.Shared.Rent(m);
        try
        {
            fixed (uint* c = copy)
            {
                if (loIdx > 0) { sample.CopyTo(copy); lo = PivotSelect(c, m, loIdx + 1, out _); }
                if (hiIdx < m) { sample.CopyTo(copy); hi = PivotSelect(c, m, hiIdx + 1, out _); }
            }
        }
        finally
        {
            ArrayPool<uint>.Shared.Return(copy);
        }
        if (hi > top) hi = top;
        return (lo, hi < lo ? lo : hi);
    }

    // ---------------------------------------------------------------- small key arrays: pivot select

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
    /// It replaced a Hoare quickselect on the sample and a second sampled round on the bracket's keys,
    /// whose branches on keys mispredict about half the time: on 448 LoRA factors (one thread) those two
    /// steps took 18 of 32 ms in place of the 2 a warmed-up loop over one factor had shown.
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

    /// <summary>One SplitMix64 step: the golden-ratio increment, then the shared finaliser.</summary>
    private static ulong Mix(ulong z) => CounterRandom.Mix(z + 0x9E3779B97F4A7C15UL);

    /// <summary>Counts of one bracket pass; Candidates (pooled) holds the keys strictly inside unless Counts.Overflow.</summary>
    internal readonly record struct BracketResult(ChunkCounts Counts, uint[] Candidates);

    /// <summary>
    /// Runs <paramref name="body"/>(start, length) over n elements cut into chunks (about sixteen per
    /// thread, at least 64K elements, multiples of 64) on the backend's threads; returns the results
    /// in chunk order, so every combination of them is independent of the thread count.
    /// </summary>
    /// <remarks>
    /// Sixteen chunks a thread, not four: on a shared machine one thread is often slowed for a while, and
    /// smaller chunks let the other take over its share (16M-element trim, 2 threads, alternating in one
    /// process: 1.45 against 1.53 SumOfMagnitudes passes, medians of 30; with the parallel sampling below, 1.34).
    /// </remarks>
    private static T[] ForEachChunk<T>(CpuBackend backend, long n, Func<long, long, T> body)
    {
        long chunk = Math.Max(1 << 16, (n / (backend.Threads * 16) + 63) & ~63L);
        var results = new T[(int)((n + chunk - 1) / chunk)];
        System.Threading.Tasks.Parallel.For(0, results.Length, backend.Parallel, c =>
        {
            long start = c * chunk;
            results[c] = body(start, Math.Min(chunk, n - start));
        });
        return results;
    }

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
                var abs = Vector512.Create(AbsMask);
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
                var abs = Vector256.Create((int)AbsMask);
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
                uint key = bits[i] & AbsMask;
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
                var abs = Vector256.Create((int)AbsMask);
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
                uint key = bits[i] & AbsMask;
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

    // ---------------------------------------------------------------- mask and helpers

    /// <summary>Zeroes every entry with key &lt; t (writing +0) and returns how many were kept.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static long Mask(float* p, long n, uint t)
    {
        long kept = 0, i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var abs = Vector512.Create((int)AbsMask);
            var vt = Vector512.Create((int)t);
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load((int*)(p + i));
                var keep = Vector512.GreaterThanOrEqual(v & abs, vt);
                (v & keep).Store((int*)(p + i));
                kept += BitOperations.PopCount(keep.ExtractMostSignificantBits());
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var abs = Vector256.Create((int)AbsMask);
            var vt = Vector256.Create((int)t);
            for (; i <= n - 8; i += 8)
            {
                var v = Vector256.Load((int*)(p + i));
                var keep = Vector256.GreaterThanOrEqual(v & abs, vt);
                (v & keep).Store((int*)(p + i));
                kept += BitOperations.PopCount(keep.ExtractMostSignificantBits());
            }
        }
        for (; i < n; i++)
        {
            uint key = ((uint*)p)[i] & AbsMask;
            if (key >= t) kept++;
            else p[i] = 0f;
        }
        return kept;
    }

    private static long ParallelMask(CpuBackend backend, float* p, long n, uint t)
    {
        var pp = (nint)p;
        return ForEachChunk(backend, n, (start, len) => Mask((float*)pp + start, len, t)).Sum();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static uint MaxKey(uint* bits, long n)
    {
        long i = 0;
        uint mx = 0;
        if (Vector512.IsHardwareAccelerated && n >= 64)
        {
            var abs = Vector512.Create(AbsMask);
            Vector512<uint> m0 = default, m1 = default, m2 = default, m3 = default;
            for (; i <= n - 64; i += 64)
            {
                m0 = Vector512.Max(m0, Vector512.Load(bits + i) & abs);
                m1 = Vector512.Max(m1, Vector512.Load(bits + i + 16) & abs);
                m2 = Vector512.Max(m2, Vector512.Load(bits + i + 32) & abs);
                m3 = Vector512.Max(m3, Vector512.Load(bits + i + 48) & abs);
            }
            var m8 = Vector512.Max(Vector512.Max(m0, m1), Vector512.Max(m2, m3));
            var m4 = Vector256.Max(m8.GetLower(), m8.GetUpper());
            for (int l = 0; l < 8; l++) mx = Math.Max(mx, m4.GetElement(l));
        }
        if (Vector256.IsHardwareAccelerated && n - i >= 8)
        {
            var abs = Vector256.Create(AbsMask);
            var vmax = Vector256<uint>.Zero;
            for (; i <= n - 8; i += 8) vmax = Vector256.Max(vmax, Vector256.Load(bits + i) & abs);
            for (int l = 0; l < 8; l++) mx = Math.Max(mx, vmax.GetElement(l));
        }
        for (; i < n; i++) mx = Math.Max(mx, bits[i] & AbsMask);
        return mx;
    }

    private static uint ParallelMaxKey(CpuBackend backend, uint* bits, long n)
    {
        var b = (nint)bits;
        return ForEachChunk(backend, n, (start, len) => MaxKey((uint*)b + start, len)).Max();
    }
}
