namespace CopaKernels.Merge.Streaming;

/// <summary>
/// Float arrays of exact lengths, handed back after each module and reused by the next read. A
/// Llama-shaped adapter has two or three factor lengths in all, so after the first modules every
/// read lands in memory that is already mapped: fresh large arrays cost a page fault per 4 KiB, as
/// much work as the trims themselves do on the same bytes.
/// </summary>
/// <remarks>
/// Holds at most <c>capacity</c> bytes of idle arrays: one module's factors, which the memory plan
/// already counts for the prefetched module. Thread-safe (the feed rents on its worker thread).
/// </remarks>
internal sealed class FactorPool(long capacity)
{
    private readonly Dictionary<int, Stack<float[]>> _free = new();
    private long _idleBytes;

    /// <summary>
    /// The pool of a run: idle arrays of two modules' inputs and low-rank results, so that arrays of the
    /// shapes in use (q/k/v/o and gate/up/down differ) wait for the next module of their shape. Less than
    /// the plan counts per module for the copies a device backend makes (MergePlanner.Working).
    /// </summary>
    public static FactorPool For(MergePlan plan) => new(plan.Modules.Count == 0 ? 0
        : 2 * plan.Modules.Max(m => m.InputBytes + (m.Form.IsDense ? 0 : (long)m.Form.Rank * (m.DIn + m.DOut) * sizeof(float))));

    /// <summary>An array of exactly <paramref name="length"/> elements, contents undefined.</summary>
    public float[] Rent(int length)
    {
        lock (_free)
        {
            if (_free.TryGetValue(length, out var stack) && stack.TryPop(out var a))
            {
                _idleBytes -= 4L * length;
                return a;
            }
        }
        return GC.AllocateUninitializedArray<float>(length);
    }

    /// <summary>Takes an array back (dropped when the pool is full).</summary>
    public void Return(float[] a)
    {
        lock (_free)
        {
            if (_idleBytes + 4L * a.Length > capacity) return;
            if (!_free.TryGetValue(a.Length, out var stack)) _free[a.Length] = stack = new Stack<float[]>();
            stack.Push(a);
            _idleBytes += 4L * a.Length;
        }
    }
}
