using System.Buffers;
using System.Numerics.Tensors;

namespace CopaKernels.Kernels.Cpu;

// Family 1 on the CPU: the exact select over keys, sampled bracket first, radix select if it missed.
// One concern of the partial class; its design and entry points are in MagnitudeSelection.cs.
internal static unsafe partial class MagnitudeSelection
{
    [ThreadStatic] private static uint[]? t_scratch;

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
            // A pivot select on a copy, not the radix select, whose histograms alone are 32 KB to clear.
            var keys = Scratch(n);
            TensorPrimitives.BitwiseAnd(new ReadOnlySpan<uint>(bits, (int)n), MagnitudeKey.F32Mask, keys);
            finite = TensorPrimitives.Max<uint>(keys[..(int)n]) < MagnitudeKey.F32Infinity;
            if (!finite) { less = 0; return 0; }
            fixed (uint* c = keys) return PivotSelect(c, n, k, out less);
        }
        bool tieHeavy = false;
        uint maxKey = 0;
        var (lo, hi) = forcedBracket ?? Bracket(bits, n, k, out tieHeavy, out maxKey, backend);
        if (maxKey >= MagnitudeKey.F32Infinity) { less = 0; finite = false; return 0; }
        var pass = BracketPass(backend, bits, n, lo, hi, inclusive: !tieHeavy);
        if (pass.Counts.Overflow && pass.Counts.MaxKey < MagnitudeKey.F32Infinity && !tieHeavy)
        {
            // The bracket's ends held more keys than the sample showed: count them apart instead.
            ArrayPool<uint>.Shared.Return(pass.Candidates);
            pass = BracketPass(backend, bits, n, lo, hi, inclusive: false);
        }
        try
        {
            finite = pass.Counts.MaxKey < MagnitudeKey.F32Infinity;
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

    /// <summary>This thread's key scratch, m + 1 long.</summary>
    private static Span<uint> Scratch(long m) => ThreadScratch.Get(ref t_scratch, (int)m + 1, 1024);
}
