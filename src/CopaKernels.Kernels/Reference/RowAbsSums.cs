namespace CopaKernels.Kernels.Reference;

/// <summary>Scalar reference of family 2: row sums of |x| (and of the entries with |x| ≥ t), accumulated in double.</summary>
internal static class ReferenceRowAbsSums
{
    /// <summary>Returns (Σ_j |x[i,j]|, Σ_j |x[i,j]|·[|x[i,j]| ≥ threshold]) per row, each rounded once to F32.</summary>
    public static (float[] Sums, float[] Masked) Compute(ReadOnlySpan<float> x, int rows, int cols, float threshold)
    {
        var sums = new float[rows];
        var masked = new float[rows];
        for (int i = 0; i < rows; i++)
        {
            double s = 0, m = 0;
            for (int j = 0; j < cols; j++)
            {
                double a = Math.Abs(x[i * cols + j]);
                s += a;
                if (Math.Abs(x[i * cols + j]) >= threshold) m += a;
            }
            sums[i] = (float)s;
            masked[i] = (float)m;
        }
        return (sums, masked);
    }
}
