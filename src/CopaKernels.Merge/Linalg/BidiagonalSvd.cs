namespace CopaKernels.Merge.Linalg;

/// <summary>
/// Singular values only, of a small dense double matrix: Householder bidiagonalization (Golub–Kahan), then the
/// eigenvalues of the bidiagonal's Golub–Kahan tridiagonal form by implicit QL. No singular vector is formed.
/// </summary>
/// <remarks>
/// <para>Bidiagonalization, B = U_Bᵀ M V_B with d on the diagonal and e above it, takes 4n²(m − n/3)
/// multiply-adds for m ≥ n, every one on a contiguous row of the row-major matrix; one-sided Jacobi on the
/// same n × n matrix takes about 4n³ per sweep over 6–12 sweeps, and forms V besides.</para>
/// <para>The singular values of B are the non-negative eigenvalues of the 2n × 2n symmetric tridiagonal
/// matrix T with zero diagonal and off-diagonal (d₀, e₀, d₁, e₁, …, d_{n−1}), whose eigenvalues are ±σᵢ
/// (Golub and Kahan, 1965). Unlike BᵀB it does not square σ, so small singular values keep their absolute
/// accuracy of about ε·σ_max (the eigenvalues of a symmetric matrix move by at most the norm of its
/// perturbation), where σ from BᵀB would lose everything below √ε·σ_max. Each QL sweep is O(n), so the
/// whole solve is O(n²).</para>
/// <para>The input is scaled by a power of two first (exact), so no square in a norm can overflow or
/// underflow.</para>
/// </remarks>
internal static class BidiagonalSvd
{
    private const double Eps = 1.1102230246251565e-16;   // 2⁻⁵³

    /// <summary>Sweeps allowed per eigenvalue before the solve gives up (quadratic convergence needs 2–3).</summary>
    private const int MaxSweepsPerValue = 40;

    /// <summary>
    /// The min(rows, cols) singular values of the row-major <paramref name="a"/>, descending; null when the QL
    /// iteration did not converge (the caller falls back to a slower method). <paramref name="a"/> is
    /// overwritten.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="a"/> has the wrong length or a non-finite entry.</exception>
    public static double[]? Values(double[] a, int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        if ((long)a.Length != (long)rows * cols) throw new ArgumentException("a must hold rows × cols values.", nameof(a));
        if (rows < cols)
        {
            // σ(M) = σ(Mᵀ): bidiagonalize the tall one.
            var t = new double[a.Length];
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < cols; j++) t[(long)j * rows + i] = a[(long)i * cols + j];
            (a, rows, cols) = (t, cols, rows);
        }
        int n = cols;
        double amax = 0;
        foreach (double x in a)
        {
            if (!double.IsFinite(x)) throw new ArgumentException("The matrix has a non-finite entry.", nameof(a));
            amax = Math.Max(amax, Math.Abs(x));
        }
        var sigma = new double[n];
        if (amax == 0) return sigma;
        int exp = Math.Clamp(Math.ILogB(amax), -1022, 1022);
        double scale = Math.ScaleB(1.0, -exp);
        for (int i = 0; i < a.Length; i++) a[i] *= scale;

        var (d, e) = Bidiagonalize(a, rows, n);
        // T: zero diagonal, off-diagonal d₀, e₀, d₁, e₁, …, d_{n−1}.
        var diag = new double[2 * n];
        var off = new double[2 * n];
        for (int k = 0; k < n; k++)
        {
            off[2 * k] = d[k];
            if (k < n - 1) off[2 * k + 1] = e[k];
        }
        if (!TridiagonalQl(diag, off)) return null;
        // Eigenvalues ±σ: the n largest are σ₁ ≥ … ≥ σ_n (a zero σ gives ±rounding; clamp its sign). An
        // insertion sort: 2n is small, and it needs no generic sort code compiled at run time.
        for (int i = 1; i < diag.Length; i++)
        {
            double v = diag[i];
            int j = i - 1;
            for (; j >= 0 && diag[j] < v; j--) diag[j + 1] = diag[j];
            diag[j + 1] = v;
        }
        for (int k = 0; k < n; k++) sigma[k] = Math.ScaleB(Math.Max(0, diag[k]), exp);
        return sigma;
    }

    /// <summary>
    /// Householder bidiagonalization of the row-major m × n matrix (m ≥ n) in place: returns its diagonal d (n)
    /// and superdiagonal e (n − 1), up to signs (which leave the singular values unchanged).
    /// </summary>
    private static (double[] D, double[] E) Bidiagonalize(double[] a, int m, int n)
    {
        var d = new double[n];
        var e = new double[Math.Max(0, n - 1)];
        var v = new double[m];
        var w = new double[n];
        for (int k = 0; k < n; k++)
        {
            // Left reflector H = I − τ·v·vᵀ on rows k.., zeroing column k below the diagonal.
            int len = m - k;
            for (int i = 0; i < len; i++) v[i] = a[(long)(k + i) * n + k];
            double tau = Reflector(v.AsSpan(0, len), out d[k]);
            int rest = n - k - 1;
            if (tau != 0 && rest > 0)
            {
                // w = vᵀ·A[k.., k+1..], accumulated row by row, then A[k+i, k+1..] −= τ·vᵢ·w.
                var wr = w.AsSpan(0, rest);
                wr.Clear();
                for (int i = 0; i < len; i++)
                    if (v[i] != 0) Householder.Axpy(v[i], a.AsSpan((int)((long)(k + i) * n + k + 1), rest), wr);
                for (int i = 0; i < len; i++)
                    if (v[i] != 0) Householder.Axpy(-tau * v[i], wr, a.AsSpan((int)((long)(k + i) * n + k + 1), rest));
            }
            if (rest == 0) break;
            // Right reflector G = I − τ·u·uᵀ on columns k+1.., zeroing row k right of the superdiagonal.
            var u = a.AsSpan((int)((long)k * n + k + 1), rest);
            if (rest == 1) { e[k] = u[0]; continue; }
            u.CopyTo(v);
            var uu = v.AsSpan(0, rest);
            tau = Reflector(uu, out e[k]);
            if (tau == 0) continue;
            for (int i = k + 1; i < m; i++)
            {
                var row = a.AsSpan((int)((long)i * n + k + 1), rest);
                double s = Householder.Dot(row, uu);
                if (s != 0) Householder.Axpy(-tau * s, uu, row);
            }
        }
        return (d, e);
    }

    /// <summary>
    /// Turns x into the Householder vector v (v₀ = 1) with (I − τ·v·vᵀ)·x = β·e₀; returns τ (0 when x is
    /// already a multiple of e₀, and then β = x₀).
    /// </summary>
    private static double Reflector(Span<double> x, out double beta)
    {
        double x0 = x[0];
        // The matrix is scaled near 1, so the squares neither overflow nor (but for parts below 1e-154 of it,
        // negligible) underflow.
        double tail = x.Length > 1 ? Math.Sqrt(Householder.Dot(x[1..], x[1..])) : 0;
        if (tail == 0) { beta = x0; return 0; }
        double norm = Math.Sqrt(x0 * x0 + tail * tail);
        beta = x0 >= 0 ? -norm : norm;
        double v0 = x0 - beta;   // no cancellation: x₀ and −β have the same sign
        double inv = 1 / v0;
        x[0] = 1;
        for (int i = 1; i < x.Length; i++) x[i] *= inv;
        return (beta - x0) / beta;
    }

    /// <summary>
    /// The eigenvalues of the symmetric tridiagonal matrix with <paramref name="diag"/> on the diagonal and
    /// <paramref name="off"/>[i] at (i, i+1) (its last entry unused), by QL with implicit Wilkinson shifts
    /// (the method of EISPACK's tql1), into <paramref name="diag"/>, unordered; false when an eigenvalue took
    /// more than <see cref="MaxSweepsPerValue"/> sweeps.
    /// </summary>
    private static bool TridiagonalQl(double[] diag, double[] off)
    {
        int size = diag.Length;
        off[size - 1] = 0;
        for (int l = 0; l < size; l++)
        {
            for (int sweep = 0; ; sweep++)
            {
                // The first negligible off-diagonal entry at or after l splits the matrix there.
                int m = l;
                for (; m < size - 1; m++)
                    if (Math.Abs(off[m]) <= Eps * (Math.Abs(diag[m]) + Math.Abs(diag[m + 1]))) break;
                if (m == l) break;
                if (m == l + 1)
                {
                    // A 2 × 2 block: its eigenvalues in closed form (exact for the [0 d; d 0] blocks of a diagonal).
                    (diag[l], diag[l + 1]) = Eigenvalues2(diag[l], off[l], diag[l + 1]);
                    off[l] = 0;
                    break;
                }
                if (sweep == MaxSweepsPerValue) return false;
                // Shift: the eigenvalue of the leading 2 × 2 block at l nearer to diag[l].
                double g = (diag[l + 1] - diag[l]) / (2 * off[l]);
                double r = double.Hypot(g, 1);
                g = diag[m] - diag[l] + off[l] / (g + Math.CopySign(r, g));
                double s = 1, c = 1, p = 0;
                int i = m - 1;
                for (; i >= l; i--)
                {
                    double f = s * off[i], b = c * off[i];
                    r = Math.Sqrt(f * f + g * g);   // T is scaled near 1 (see Values): no square overflows; an underflow to 0 is caught below
                    off[i + 1] = r;
                    if (r == 0)
                    {
                        // Underflow: the rotation is the identity; deflate here and sweep again.
                        diag[i + 1] -= p;
                        off[m] = 0;
                        break;
                    }
                    s = f / r;
                    c = g / r;
                    g = diag[i + 1] - p;
                    r = (diag[i] - g) * s + 2 * c * b;
                    p = s * r;
                    diag[i + 1] = g + p;
                    g = c * r - b;
                }
                if (i >= l) continue;
                diag[l] -= p;
                off[l] = g;
                off[m] = 0;
            }
        }
        return true;
    }

    /// <summary>
    /// The eigenvalues of [a b; b c]: the larger in magnitude from the trace and the discriminant, the other as
    /// det / that one, so neither suffers cancellation.
    /// </summary>
    private static (double, double) Eigenvalues2(double a, double b, double c)
    {
        double sum = a + c, root = double.Hypot(a - c, 2 * b);
        if (sum == 0) return (0.5 * root, -0.5 * root);
        double big = sum > 0 ? 0.5 * (sum + root) : 0.5 * (sum - root);
        return (big, a / big * c - b / big * b);
    }
}
