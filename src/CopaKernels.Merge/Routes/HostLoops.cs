namespace CopaKernels.Merge.Routes;

/// <summary>The merge's own parallel loops over host arrays (the element-wise steps every route runs on the host).</summary>
internal static class HostLoops
{
    /// <summary>Elements per work item of the fused sums: a few L1-sized blocks of every input.</summary>
    internal const int SumChunk = 4096;

    /// <summary>
    /// <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/> that rethrows the first failure
    /// as itself, not wrapped in an <see cref="AggregateException"/>, so an input error read on a worker
    /// (a truncated file, say) reaches the command's one-line error handling unchanged.
    /// </summary>
    public static void ParallelFor(int count, ParallelOptions parallel, Action<int> body)
    {
        try { Parallel.For(0, count, parallel, body); }
        catch (AggregateException e) when (e.InnerExceptions.Count > 0)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
        }
    }

    /// <summary>Runs <paramref name="body"/>(start, end) over [0, <paramref name="length"/>) in blocks of <paramref name="block"/> elements spread over the threads.</summary>
    public static void ForBlocks(int length, int block, ParallelOptions parallel, Action<int, int> body) =>
        ParallelFor((length + block - 1) / block, parallel, c => body(c * block, Math.Min(length, (c + 1) * block)));
}
