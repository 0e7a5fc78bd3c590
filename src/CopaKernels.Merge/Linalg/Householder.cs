using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CopaKernels.Merge.Linalg;

/// <summary>
/// Householder QR in double of an m × n matrix held column by column (column j is the contiguous
/// slice [j·m, (j+1)·m), i.e. the matrix is stored column-major). Works for any shape: with
/// p = min(m, n) reflectors, A = Q R where Q is m × p with orthonormal columns (never formed; it is
/// applied from the reflectors) and R is p × n upper trapezoidal.
/// </summary>
/// <remarks>
/// <para>Column-major storage keeps every reflector and every column it updates contiguous, so both the
/// dot and the update of one reflector application stream unit-stride memory.</para>
/// <para>The factorization is right-looking and panel-blocked: a panel of <see cref="PanelWidth"/>
/// reflectors is built unblocked, then applied to each trailing column in turn while that column sits in
/// L1/L2. Each trailing column therefore leaves cache once per panel rather than once per reflector,
/// which for d = 14336 is the difference between memory-bound and compute-bound. The operations applied
/// to any one column are the same, in the same order, as the unblocked algorithm, and trailing columns
/// are independent, so the parallel loop over them gives bit-identical results for any thread count.</para>
/// </remarks>
internal static class Householder
{
    /// <summary>Reflectors per panel: 32 reflectors of length 14336 are 3.7 MB, L3-resident.</summary>
    internal const int PanelWidth = 32;

    /// <summary>Below this many multiply-adds a parallel loop costs more than it saves.</summary>
    private const long ParallelThreshold = 1L << 17;

    /// <summary>A factorization: the reflectors, their coefficients and R.</summary>
    internal sealed class Factors
    {
        private readonly double[] _work;
        private readonly double[] _tau;
        private readonly double[] _diag;

        internal Factors(double[] work, double[] tau, double[] diag, int rows, int cols)
        {
            _work = work;
            _tau = tau;
            _diag = diag;
            Rows = rows;
            Cols = cols;
        }

        /// <summary>m.</summary>
        public int Rows { get; }

        /// <summary>n.</summary>
        public int Cols { get; }

        /// <summary>p = min(m, n): reflectors, columns of the thin Q and rows of R.</summary>
        public int Reflectors => Math.Min(Rows, Cols);

        /// <summary>
        /// R as a p × n row-major array (zero below the diagonal). Its diagonal may have either sign:
        /// the reflector sign is chosen for stability, not to make R's diagonal positive.
        /// </summary>
        public double[] UpperR()
        {
            int p = Reflectors, m = Rows, n = Cols;
            var r = new double[(long)p * n];
            for (int i = 0; i < p; i++)
            {
                r[(long)i * n + i] = _diag[i];
                for (int j = i + 1; j < n; j++) r[(long)i * n + j] = _work[(long)j * m + i];
            }
            return r;
        }

        /// <summary>
        /// Overwrites each of the <paramref name="count"/> columns of <paramref name="x"/> (column-major,
        /// m × count) with Q · x: on entry rows p..m-1 of every column must be zero (x is a p-vector
        /// padded to m), on exit the columns are the m-vectors Q x. Only the reflectors are used.
        /// <paramref name="parallel"/> bounds the threads (null: the default options); the columns are
        /// independent, so the result is bit-identical for any thread count.
        /// </summary>
        public void ApplyQ(double[] x, int count, ParallelOptions? parallel = null)
        {
            parallel ??= new ParallelOptions();
            int m = Rows, p = Reflectors;
            if ((long)x.Length < (long)m * count) throw new ArgumentException("x is shorter than m × count.", nameof(x));
            // Q = H_0 H_1 ⋯ H_{p-1}, so the last reflector acts first. Reflectors go in panels (last panel
            // first) applied to every column before the next panel, so a panel is read from memory once
            // rather than once per column; per column the order of operations is unchanged.
            for (int kEnd = p; kEnd > 0; kEnd -= PanelWidth)
            {
                int k0 = Math.Max(0, kEnd - PanelWidth);
                void One(int c)
                {
                    var col = x.AsSpan((int)((long)c * m), m);
                    for (int k = kEnd - 1; k >= k0; k--) Reflect(k, col);
                }
                if ((long)count * (kEnd - k0) * m < ParallelThreshold || count == 1) { for (int c = 0; c < count; c++) One(c); }
                else Parallel.For(0, count, parallel, One);
            }
        }

        /// <summary>y[k..m) ← H_k y[k..m).</summary>
        private void Reflect(int k, Span<double> y)
        {
            double tau = _tau[k];
            if (tau == 0) return;
            int m = Rows;
            var v = _work.AsSpan((int)((long)k * m + k), m - k);
            var seg = y[k..];
            Axpy(-tau * Dot(v, seg), v, seg);
        }
    }

    /// <summary>
    /// Factors the column-major m × n matrix in <paramref name="columns"/> in place (the array is
    /// taken over by the returned <see cref="Factors"/>). <paramref name="parallel"/> bounds the threads
    /// of the trailing-column updates (null: the default options).
    /// </summary>
    public static Factors Factor(double[] columns, int rows, int cols, ParallelOptions? parallel = null)
    {
        parallel ??= new ParallelOptions();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        if ((long)columns.Length != (long)rows * cols) throw new ArgumentException("columns must hold rows × cols values.", nameof(columns));
        int m = rows, n = cols, p = Math.Min(m, n);
        var tau = new double[p];
        var diag = new double[p];

        for (int k0 = 0; k0 < p; k0 += PanelWidth)
        {
            int kEnd = Math.Min(k0 + PanelWidth, p);
            // Panel: unblocked, each reflector applied only to the panel columns after it.
            for (int k = k0; k < kEnd; k++)
            {
                MakeReflector(columns, m, k, out tau[k], out diag[k]);
                if (tau[k] == 0) continue;
                var v = columns.AsSpan((int)((long)k * m + k), m - k);
                for (int j = k + 1; j < kEnd; j++)
                {
                    var y = columns.AsSpan((int)((long)j * m + k), m - k);
                    Axpy(-tau[k] * Dot(v, y), v, y);
                }
            }
            int first = kEnd;
            if (first >= n) continue;

            void Trailing(int j)
            {
                var col = columns.AsSpan((int)((long)j * m), m);
                for (int k = k0; k < kEnd; k++)
                {
                    double t = tau[k];
                    if (t == 0) continue;
                    var v = columns.AsSpan((int)((long)k * m + k), m - k);
                    var y = col[k..];
                    Axpy(-t * Dot(v, y), v, y);
                }
            }
            long work = (long)(n - first) * (kEnd - k0) * (m - k0);
            if (work < ParallelThreshold || n - first == 1) { for (int j = first; j < n; j++) Trailing(j); }
            else Parallel.For(first, n, parallel, Trailing);
        }
        return new Factors(columns, tau, diag, m, n);
    }

    /// <summary>
    /// Turns x = column k, rows k..m-1, into the reflector v (stored in place, v[0] explicit) with
    /// H = I − τ v vᵀ and H x = β e₁; β is R[k,k].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MakeReflector(double[] columns, int m, int k, out double tau, out double beta)
    {
        var x = columns.AsSpan((int)((long)k * m + k), m - k);
        double amax = 0;
        foreach (double e in x) amax = Math.Max(amax, Math.Abs(e));
        if (amax == 0)
        {
            // A column that vanishes below the trailing block (rank deficiency, or a zero factor):
            // no reflection, and no division by its zero norm.
            tau = 0; beta = 0; return;
        }
        double alphaRaw = x[0];
        // Scaling by a power of two is exact and keeps the squared norm clear of overflow and
        // underflow whatever the magnitudes, at the cost of one extra pass over a column.
        // The clamp keeps the scale itself a normal double (a subnormal amax would otherwise ask for 2^1074).
        double scale = Math.ScaleB(1.0, Math.Clamp(-Math.ILogB(amax), -1022, 1022));
        double sigma = 0;
        for (int i = 1; i < x.Length; i++) { double e = x[i] * scale; sigma += e * e; }
        if (sigma == 0)
        {
            // Already zero below the diagonal (also the 1-element last column of a wide matrix).
            tau = 0; beta = alphaRaw; return;
        }
        double alpha = alphaRaw * scale;
        double norm = Math.Sqrt(alpha * alpha + sigma);
        // β takes the sign opposite to α, so v₀ = α − β adds two same-signed numbers: no cancellation.
        double b = alpha >= 0 ? -norm : norm;
        double v0 = alpha - b;
        x[0] = v0;
        for (int i = 1; i < x.Length; i++) x[i] *= scale;
        tau = 2.0 / (v0 * v0 + sigma);
        beta = b / scale;
    }

    /// <summary>xᵀy with four independent Vector256 FMA chains; fixed reduction order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static double Dot(ReadOnlySpan<double> x, ReadOnlySpan<double> y)
    {
        int n = x.Length;
        if (y.Length < n) throw new ArgumentException("y is shorter than x.", nameof(y));
        ref double px = ref MemoryMarshal.GetReference(x);
        ref double py = ref MemoryMarshal.GetReference(y);
        int i = 0;
        double sum = 0;
        if (n >= 16)
        {
            var a0 = Vector256<double>.Zero; var a1 = Vector256<double>.Zero;
            var a2 = Vector256<double>.Zero; var a3 = Vector256<double>.Zero;
            for (; i <= n - 16; i += 16)
            {
                a0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)i), Vector256.LoadUnsafe(ref py, (nuint)i), a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)(i + 4)), Vector256.LoadUnsafe(ref py, (nuint)(i + 4)), a1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)(i + 8)), Vector256.LoadUnsafe(ref py, (nuint)(i + 8)), a2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)(i + 12)), Vector256.LoadUnsafe(ref py, (nuint)(i + 12)), a3);
            }
            for (; i <= n - 4; i += 4)
                a0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref px, (nuint)i), Vector256.LoadUnsafe(ref py, (nuint)i), a0);
            sum = Vector256.Sum((a0 + a1) + (a2 + a3));
        }
        for (; i < n; i++) sum = Math.FusedMultiplyAdd(Unsafe.Add(ref px, i), Unsafe.Add(ref py, i), sum);
        return sum;
    }

    /// <summary>y ← y + a·x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Axpy(double a, ReadOnlySpan<double> x, Span<double> y)
    {
        int n = x.Length;
        if (y.Length < n) throw new ArgumentException("y is shorter than x.", nameof(y));
        if (a == 0) return;
        ref double px = ref MemoryMarshal.GetReference(x);
        ref double py = ref MemoryMarshal.GetReference(y);
        var va = Vector256.Create(a);
        int i = 0;
        for (; i <= n - 8; i += 8)
        {
            var y0 = Vector256.FusedMultiplyAdd(va, Vector256.LoadUnsafe(ref px, (nuint)i), Vector256.LoadUnsafe(ref py, (nuint)i));
            var y1 = Vector256.FusedMultiplyAdd(va, Vector256.LoadUnsafe(ref px, (nuint)(i + 4)), Vector256.LoadUnsafe(ref py, (nuint)(i + 4)));
            y0.StoreUnsafe(ref py, (nuint)i);
            y1.StoreUnsafe(ref py, (nuint)(i + 4));
        }
        for (; i < n; i++) Unsafe.Add(ref py, i) = Math.FusedMultiplyAdd(a, Unsafe.Add(ref px, i), Unsafe.Add(ref py, i));
    }
}
