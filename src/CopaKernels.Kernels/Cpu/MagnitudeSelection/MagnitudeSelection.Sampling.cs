using System.Buffers;
using System.Runtime.CompilerServices;

namespace CopaKernels.Kernels.Cpu;

// Family 1 on the CPU: the deterministic stratified sample and the bracket it gives.
// One concern of the partial class; its design and entry points are in MagnitudeSelection.cs.
internal static unsafe partial class MagnitudeSelection
{
    private const int SampleCount = 16384;

    /// <summary>
    /// Keys lo ≤ hi that hold the k-th smallest between them with high probability, from a
    /// deterministic sample: one key from each of m strata, at a hashed position inside the stratum.
    /// <paramref name="tieHeavy"/> says whether lo or hi recur in the sample (over 1% of it): then many
    /// keys equal an end of the bracket, and the pass that counts them apart (<see cref="CountBracket"/>)
    /// beats the one that copies them (<see cref="CountInclusive"/>). Below <see cref="LargeThreshold"/>
    /// keys the sample is taken while streaming over the whole tensor (<see cref="StreamGather"/>), and
    /// <paramref name="maxKey"/> is the largest key (else 0: not known); above it, with
    /// <paramref name="backend"/>, the sample is gathered by its threads, the same sample as on one thread.
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
            var (lo, hi) = SampleBracket(sample.AsSpan(0, m), n, k, 4.5, 4, MagnitudeKey.F32Infinity - 1);
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
            // (with one part each, the caller would wait for the sleeper's part).
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
    /// read, where the sample's scattered reads alone each wait for memory; and the passes after it find
    /// the tensor in cache.
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
        for (int j = from; j < to; j++) sample[j] = bits[j * stride + StratumOffset(j, stride)] & MagnitudeKey.F32Mask;
    }

    /// <summary>
    /// Where stratum j (of <paramref name="stride"/> values) is sampled: a hashed offset in [0, stride), the
    /// high half of hash × stride (a multiply, where a modulo would cost a 64-bit division per sample).
    /// Shared by the F32 and 16-bit selections.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static long StratumOffset(int j, long stride) =>
        (long)Math.BigMul(j < StrataHashes.Length ? StrataHashes[j] : Mix((ulong)j), (ulong)stride, out _);

    /// <summary>The hashes of the first <see cref="SampleCount"/> strata, so a sample costs a load and a
    /// multiply, not a hash computation.</summary>
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

    /// <summary>One SplitMix64 step: the golden-ratio increment, then the shared finaliser.</summary>
    private static ulong Mix(ulong z) => CounterRandom.Mix(z + 0x9E3779B97F4A7C15UL);
}
