using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// Families 1 and 2 on host memory, on the calling thread: for callers that hold their tensors in
/// managed arrays and parallelise across tensors themselves (the merge's CPU path runs one task's
/// factors per thread), so nothing is copied into or out of a <see cref="KernelBuffer"/>.
/// </summary>
/// <remarks>
/// The same algorithms as <see cref="CpuBackend"/>'s kernels, so thresholds, masks and kept counts are
/// identical bit for bit to the backend's (and to the scalar reference), and the row sums add in the
/// same order. Only the threading differs: these never start threads.
/// </remarks>
// RS0026 (no two overloads with optional parameters) guards against ambiguous calls after an overload is
// added; SelectByMagnitude's overloads take spans of different element types, so no call can be ambiguous.
#pragma warning disable RS0026
public static unsafe class HostKernels
{
    /// <summary>
    /// Family 1: t = k-th smallest |x| with k = floor(n·(1−ρ)); when <paramref name="applyMask"/>,
    /// entries with |x| &lt; t are set to +0 in place.
    /// Throws <see cref="NonFiniteInputException"/> if <paramref name="x"/> holds NaN or ±Inf.
    /// </summary>
    public static SelectionResult SelectByMagnitude(Span<float> x, double density, bool applyMask = true)
    {
        SelectionResult.CheckDensity(density);
        fixed (float* p = x)
        {
            var r = MagnitudeSelection.SelectTensor(null, p, x.Length, SelectionResult.KFor(x.Length, density), applyMask, out bool finite);
            if (!finite) throw new NonFiniteInputException(0);
            return r;
        }
    }

    /// <summary>
    /// Family 1 on 16-bit float storage: <paramref name="bits"/> holds BF16 or F16 values (as read from
    /// a file), selected without widening them. The threshold, kept count and mask are those of
    /// <see cref="SelectByMagnitude(Span{float}, double, bool)"/> on the widened values, bit for bit;
    /// masked entries are set to +0 (bits 0).
    /// Throws <see cref="NonFiniteInputException"/> if <paramref name="bits"/> holds NaN or ±Inf.
    /// </summary>
    public static SelectionResult SelectByMagnitude(Span<ushort> bits, DType format, double density, bool applyMask = true) =>
        Select16(bits, format, density, applyMask);

    /// <summary>
    /// Family 1's threshold on 16-bit float storage that may not be written (a memory-mapped file):
    /// <see cref="SelectByMagnitude(Span{ushort}, DType, double, bool)"/> without the mask, the
    /// kept count being how many would be kept. Throws <see cref="NonFiniteInputException"/> on NaN/±Inf.
    /// </summary>
    public static SelectionResult ThresholdByMagnitude(ReadOnlySpan<ushort> bits, DType format, double density) =>
        Select16(bits, format, density, applyMask: false);

    /// <summary>Both 16-bit entry points; the values are written only with <paramref name="applyMask"/>.</summary>
    private static SelectionResult Select16(ReadOnlySpan<ushort> bits, DType format, double density, bool applyMask)
    {
        SelectionResult.CheckDensity(density);
        fixed (ushort* p = bits)
        {
            var r = MagnitudeSelection16.Select(p, bits.Length, SelectionResult.KFor(bits.Length, density), format, applyMask, out bool finite);
            if (!finite) throw new NonFiniteInputException(0);
            return r;
        }
    }

    /// <summary>
    /// The mask of family 1 on 16-bit float storage, out of place: <paramref name="destination"/> gets
    /// <paramref name="source"/> with every |x| &lt; <paramref name="threshold"/> set to +0 (bits 0); returns
    /// how many were kept. The one pass that reads the values and writes the trimmed copy.
    /// </summary>
    public static long MaskByMagnitude(ReadOnlySpan<ushort> source, Span<ushort> destination, DType format, float threshold)
    {
        if (destination.Length < source.Length) throw new ArgumentException($"destination holds {destination.Length} values, fewer than {source.Length}", nameof(destination));
        uint key = ThresholdKey(format, threshold);
        fixed (ushort* s = source)
        fixed (ushort* d = destination)
            return MagnitudeSelection16.Mask(s, d, source.Length, key);
    }

    /// <summary>
    /// The mask of family 1 on 16-bit float storage, for a threshold found earlier (a factor whose row
    /// sums needed its untrimmed values first): entries with |x| &lt; <paramref name="threshold"/> are
    /// set to +0 (bits 0); returns how many were kept. NaN and ±Inf are not looked for.
    /// </summary>
    public static long MaskByMagnitude(Span<ushort> bits, DType format, float threshold)
    {
        uint key = ThresholdKey(format, threshold);
        fixed (ushort* p = bits) return MagnitudeSelection16.Mask(p, p, bits.Length, key);
    }

    /// <summary>
    /// The smallest key whose value is ≥ |threshold|: exact for a threshold that came from a selection on
    /// this format, and the right cut for any other.
    /// </summary>
    private static uint ThresholdKey(DType format, float threshold)
    {
        float t = Math.Abs(threshold);
        uint key = format == DType.BF16 ? BitConverter.SingleToUInt32Bits(t) >> 16 : BitConverter.HalfToUInt16Bits((Half)t);
        while (key < 0x8000 && MagnitudeSelection16.Widen(key, format) < t) key++;
        return key;
    }

    /// <summary>
    /// Family 2: for the rows × cols row-major matrix <paramref name="x"/>, sums[i] = Σ_j |x[i,j]| and
    /// maskedSums[i] = Σ_j |x[i,j]|·[|x[i,j]| ≥ threshold] in one pass; with <paramref name="applyMask"/>
    /// the entries below the threshold are zeroed (written +0) in the same pass.
    /// </summary>
    public static void RowAbsSums(Span<float> x, int rows, int cols, Span<float> sums, float threshold, Span<float> maskedSums, bool applyMask)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        if ((long)rows * cols > x.Length) throw new ArgumentException($"x holds {x.Length} values, fewer than {rows} × {cols}", nameof(x));
        if (sums.Length < rows || maskedSums.Length < rows) throw new ArgumentException($"the sums need {rows} entries each", nameof(sums));
        uint t = BitConverter.SingleToUInt32Bits(Math.Abs(threshold));
        fixed (float* p = x)
            for (int i = 0; i < rows; i++)
                (sums[i], maskedSums[i]) = Cpu.RowAbsSums.Fused(p + (long)i * cols, cols, t, applyMask);
    }

    /// <summary>
    /// The k-th smallest |x| (1-based), exact, without modifying <paramref name="x"/>: the order statistic
    /// family 1 is built on, for callers that need it at other positions (PCB's clipping quantiles).
    /// Throws <see cref="NonFiniteInputException"/> if <paramref name="x"/> holds NaN or ±Inf.
    /// </summary>
    public static float KthSmallestMagnitude(ReadOnlySpan<float> x, long k)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(k, x.Length);
        fixed (float* p = x)
        {
            uint t = MagnitudeSelection.SelectKeys((uint*)p, x.Length, k, null, out _, out bool finite);
            if (!finite) throw new NonFiniteInputException(0);
            return BitConverter.UInt32BitsToSingle(t);
        }
    }

    /// <summary>
    /// The k-th smallest value of <paramref name="x"/> (1-based, signed order; −0 and +0 are equal),
    /// exact, without modifying it: the negatives are selected by magnitude from the other end.
    /// Throws <see cref="NonFiniteInputException"/> if <paramref name="x"/> holds NaN or ±Inf.
    /// </summary>
    public static float KthSmallest(ReadOnlySpan<float> x, long k) => KthSmallest(x, k, new float[x.Length]);

    /// <summary>
    /// <see cref="KthSmallest(ReadOnlySpan{float}, long)"/> with caller-owned scratch of at least
    /// x.Length elements (overwritten), so repeated calls on large tensors allocate nothing.
    /// </summary>
    public static float KthSmallest(ReadOnlySpan<float> x, long k, Span<float> scratch)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(k, x.Length);
        if (scratch.Length < x.Length) throw new ArgumentException($"scratch holds {scratch.Length} values, fewer than {x.Length}", nameof(scratch));
        int negatives = 0;
        foreach (float v in x)
        {
            if (!float.IsFinite(v)) throw new NonFiniteInputException(0);
            if (v < 0) negatives++;
        }
        bool below = k <= negatives;
        int w = 0;
        foreach (float v in x)
            if ((v < 0) == below) scratch[w++] = v;
        // Ascending values among the negatives are descending magnitudes.
        var part = scratch[..w];
        return below ? -KthSmallestMagnitude(part, negatives - k + 1) : KthSmallestMagnitude(part, k - negatives);
    }
}
#pragma warning restore RS0026
