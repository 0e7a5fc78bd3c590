namespace CopaKernels.Kernels;

/// <summary>The outcome of an exact magnitude selection (SEMANTICS §1) on one tensor.</summary>
/// <param name="K">k = floor(n·(1−ρ)): how many of the smallest |x| are candidates for removal; 0 keeps everything.</param>
/// <param name="Threshold">t = the k-th smallest |x| (1-based), or 0 when k = 0; entries with |x| ≥ t are kept.</param>
/// <param name="Kept">Number of entries kept (can exceed n − k when several entries equal t).</param>
public readonly record struct SelectionResult(long K, float Threshold, long Kept)
{
    /// <summary>k = floor(n·(1−ρ)) computed in double precision, exactly as Python's <c>int(n*(1-rho))</c>.</summary>
    public static long KFor(long n, double density) => (long)Math.Floor(n * (1.0 - density));

    /// <summary>Checks a density is in (0, 1].</summary>
    public static void CheckDensity(double density)
    {
        if (!(density > 0 && density <= 1))
            throw new ArgumentOutOfRangeException(nameof(density), density, "density (the fraction kept) must be in (0, 1]");
    }
}

/// <summary>A tensor holds NaN or ±Inf. <see cref="RangeIndex"/> says which range of a batched call.</summary>
public sealed class NonFiniteInputException(int rangeIndex)
    : Exception($"tensor {rangeIndex} of the call holds NaN or Inf")
{
    /// <summary>Index of the offending range in the call (0 for single-tensor calls).</summary>
    public int RangeIndex { get; } = rangeIndex;
}
