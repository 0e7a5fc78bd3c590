namespace CopaKernels.Kernels;

/// <summary>
/// Per-thread scratch arrays for the kernels' and the merge's passes: each grows to the longest request on
/// its thread and is reused after, so a loop over tensors allocates nothing once the shapes in use have
/// been seen.
/// </summary>
internal static class ThreadScratch
{
    /// <summary>
    /// The first <paramref name="length"/> elements of <paramref name="slot"/> (a [ThreadStatic] field), which
    /// is first replaced by an array of max(<paramref name="length"/>, <paramref name="minimum"/>) when shorter.
    /// Contents are whatever the thread left there.
    /// </summary>
    public static Span<T> Get<T>(ref T[]? slot, int length, int minimum = 0) =>
        (slot is { } a && a.Length >= length ? a : slot = new T[Math.Max(length, minimum)]).AsSpan(0, length);
}
