namespace CopaKernels.Kernels.Reference;

/// <summary>
/// Scalar reference of families 3 and 4: rows of Σ_n B_n · diag(Factor_n · Scale_n) · A_n (+ base), with the
/// coefficients, the products and the sum over all Σ r_n inner indices in double, rounded once to F32.
/// </summary>
internal static class ReferenceLowRankProduct
{
    /// <summary>
    /// Returns the rowCount × dIn tile starting at row <paramref name="rowStart"/>:
    /// out[i, j] = (float)(base[i, j] + Σ_n Σ_k B_n[rowStart + i, k] · Factor_n · Scale_n[k] · A_n[k, j]).
    /// </summary>
    /// <param name="terms">Per term: B (dOut × Rank, row-major), A (Rank × dIn, row-major), Rank, Factor, optional Scale (Rank).</param>
    /// <param name="dOut">Rows of every B.</param>
    /// <param name="dIn">Columns of every A.</param>
    /// <param name="rowStart">First row of the tile.</param>
    /// <param name="rowCount">Rows in the tile.</param>
    /// <param name="baseTile">Optional rowCount × dIn F32 tile added before rounding.</param>
    public static float[] Compute(IReadOnlyList<(float[] B, float[] A, int Rank, float Factor, float[]? Scale)> terms,
        int dOut, int dIn, int rowStart, int rowCount, float[]? baseTile = null)
    {
        if (rowStart < 0 || rowCount < 0 || rowStart + rowCount > dOut) throw new ArgumentOutOfRangeException(nameof(rowCount));
        var result = new float[rowCount * dIn];
        var sums = new double[dIn];
        for (int i = 0; i < rowCount; i++)
        {
            Array.Clear(sums);
            foreach (var (b, a, rank, factor, scale) in terms)
            {
                for (int k = 0; k < rank; k++)
                {
                    double coef = (double)factor * (scale != null ? scale[k] : 1.0);
                    double w = b[(rowStart + i) * rank + k] * coef;
                    for (int j = 0; j < dIn; j++) sums[j] += w * a[k * dIn + j];
                }
            }
            for (int j = 0; j < dIn; j++)
                result[i * dIn + j] = (float)(sums[j] + (baseTile != null ? baseTile[i * dIn + j] : 0.0));
        }
        return result;
    }

    /// <summary>
    /// The bit-exact product (<see cref="ProductTile.BitExact"/>), as its definition reads: c[k] and
    /// B'[i,k] = B[i,k]·c[k] in fp32, then Σ_k (double)B'[i,k]·(double)A[k,j] over k ascending from +0,
    /// rounded once to fp32. Every backend must return these bits.
    /// </summary>
    public static float[] ComputeBitExact(IReadOnlyList<(float[] B, float[] A, int Rank, float Factor, float[]? Scale)> terms,
        int dOut, int dIn, int rowStart, int rowCount)
    {
        if (rowStart < 0 || rowCount < 0 || rowStart + rowCount > dOut) throw new ArgumentOutOfRangeException(nameof(rowCount));
        var result = new float[rowCount * dIn];
        var sums = new double[dIn];
        for (int i = 0; i < rowCount; i++)
        {
            Array.Clear(sums);
            foreach (var (b, a, rank, factor, scale) in terms)
            {
                for (int k = 0; k < rank; k++)
                {
                    float coef = scale != null ? factor * scale[k] : factor;
                    double w = b[(rowStart + i) * rank + k] * coef;
                    for (int j = 0; j < dIn; j++) sums[j] += w * a[k * dIn + j];
                }
            }
            for (int j = 0; j < dIn; j++) result[i * dIn + j] = (float)sums[j];
        }
        return result;
    }
}
