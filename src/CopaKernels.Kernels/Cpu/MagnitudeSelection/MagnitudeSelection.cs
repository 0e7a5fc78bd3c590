namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// Family 1 on the CPU: the exact k-th smallest |x| and the keep-mask |x| ≥ t (SEMANTICS §1).
/// </summary>
/// <remarks>
/// Everything works on keys: the float bits with the sign cleared (<see cref="MagnitudeKey"/>). For
/// non-negative IEEE floats the unsigned (and, below 2^31, the signed) integer order of the bits is
/// the numeric order, so the k-th smallest key is the k-th smallest |x|, +0 and −0 are the same key,
/// and a key ≥ 0x7F800000 is ±Inf or NaN. One exact algorithm, with two ways to sample:
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
/// <para>One file per concern: this one (entry points, the chunking over threads), .SelectKeys (the
/// exact select over keys), .Sampling (sample and bracket), .PivotSelect (small key arrays),
/// .Counting (the bracket pass), .Radix (the fallback) and .Mask (mask and largest key).</para>
/// </remarks>
internal static unsafe partial class MagnitudeSelection
{
    /// <summary>Tensors at least this long take the sampled-bracket path (measured crossover; see bench).</summary>
    internal const long LargeThreshold = 1 << 18;

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
            finite = (backend == null ? MaxKey((uint*)p, n) : ParallelMaxKey(backend, (uint*)p, n)) < MagnitudeKey.F32Infinity;
            return new SelectionResult(0, 0f, n);
        }
        uint t = SelectKeys((uint*)p, n, k, backend, out long less, out finite, forcedBracket);
        if (!finite) return default;
        long kept = !applyMask ? n - less : backend == null ? Mask(p, n, t) : ParallelMask(backend, p, n, t);
        return new SelectionResult(k, BitConverter.UInt32BitsToSingle(t), kept);
    }

    // ---------------------------------------------------------------- threads

    /// <summary>
    /// Runs <paramref name="body"/>(start, length) over n elements cut into chunks (about sixteen per
    /// thread, at least 64K elements, multiples of 64) on the backend's threads; returns the results
    /// in chunk order, so every combination of them is independent of the thread count.
    /// </summary>
    /// <remarks>
    /// Sixteen chunks a thread, not four: on a shared machine one thread is often slowed for a while, and
    /// smaller chunks let the other take over its share.
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
}
