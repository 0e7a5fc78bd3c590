namespace CopaKernels.Kernels.Reference;

/// <summary>
/// Scalar reference of family 1 (SEMANTICS §1), written for obviousness: sort |x|, take the k-th
/// smallest, keep |x| ≥ t. Every backend's threshold, kept count and mask must equal this bit for bit.
/// </summary>
internal static class ReferenceMagnitudeSelection
{
    /// <summary>Selects in place and returns (k, t, kept). Throws <see cref="NonFiniteInputException"/> on NaN/Inf.</summary>
    public static SelectionResult Select(Span<float> x, double density)
    {
        foreach (var v in x)
            if (!float.IsFinite(v)) throw new NonFiniteInputException(0);
        long n = x.Length;
        long k = SelectionResult.KFor(n, density);
        if (k == 0) return new SelectionResult(0, 0f, n);
        var mags = new float[n];
        for (int i = 0; i < n; i++) mags[i] = Math.Abs(x[i]);
        Array.Sort(mags);
        float t = mags[k - 1];
        long kept = 0;
        for (int i = 0; i < n; i++)
        {
            if (Math.Abs(x[i]) >= t) kept++;
            else x[i] = 0f;
        }
        return new SelectionResult(k, t, kept);
    }
}
