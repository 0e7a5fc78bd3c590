using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CopaKernels.Merge.Linalg;

/// <summary>
/// Thin SVD M = U Σ Vᵀ of a dense double matrix by one-sided (Hestenes) Jacobi. Written here because
/// no suitable .NET dense-SVD library is available to this solution.
/// </summary>
/// <remarks>
/// <para>Hestenes' method orthogonalizes the columns of the tall matrix W = M (Mᵀ when M is wide) by
/// plane rotations, accumulating the same rotations into V: at convergence W = U Σ. It is chosen over
/// bidiagonalization + QR iteration because it is short, needs no deflation logic, and computes every
/// singular value to high relative accuracy with respect to column-scaled perturbations.</para>
/// <para>Convergence: a pair (p, q) is rotated when |w_pᵀw_q| &gt; tol·‖w_p‖‖w_q‖ with
/// tol = max(<c>tolerance</c>, √m·ε) — the √m·ε floor is the rounding level of an m-term dot (LAPACK's
/// DGESVJ uses the same), below which the test could never be met. Sweeps stop when one sweep rotates
/// nothing, or after <c>maxSweeps</c>.</para>
/// <para>Ordering: block-cyclic (see <c>Orthogonalize</c>), for cache reuse; rounds of disjoint block
/// pairs run in parallel on large problems, and since the schedule is fixed the result is bit-identical
/// for any thread count. Squared column norms are cached and updated by the
/// exact post-rotation identities (‖w_p‖² − tγ, ‖w_q‖² + tγ), are recomputed when an update cancels,
/// and are recomputed from scratch at the start of every sweep.</para>
/// <para>Output: singular values descending (ties by column index); each u_j is normalized so its
/// largest-magnitude component (the first, on ties) is positive, with v_j flipped alongside; for σ_j = 0,
/// u_j is the zero vector and the sign rule is applied to v_j instead. The input is pre-scaled by a
/// power of two (exact) so the squared norms cannot overflow.</para>
/// </remarks>
internal static class JacobiSvd
{
    /// <summary>Default relative off-diagonal tolerance.</summary>
    internal const double DefaultTolerance = 1e-15;

    /// <summary>Default sweep cap; quadratic convergence needs ~6–12 in practice.</summary>
    internal const int DefaultMaxSweeps = 60;

    /// <summary>Below this many rows × columns a sweep is run serially.</summary>
    private const long ParallelThreshold = 96 * 96;

    /// <summary>
    /// A thin SVD: k = min(rows, cols) singular triplets. <see cref="U"/> is column-major rows × k
    /// (column j is [j·rows, (j+1)·rows)), <see cref="V"/> column-major cols × k.
    /// </summary>
    /// <param name="U">Left singular vectors, column-major rows × k.</param>
    /// <param name="S">Singular values, descending.</param>
    /// <param name="V">Right singular vectors, column-major cols × k.</param>
    /// <param name="Rows">m.</param>
    /// <param name="Cols">n.</param>
    /// <param name="Sweeps">Sweeps performed (the last one rotating nothing when converged).</param>
    /// <param name="Converged">Whether a sweep rotated nothing before the cap.</param>
    internal sealed record Result(double[] U, double[] S, double[] V, int Rows, int Cols, int Sweeps, bool Converged)
    {
        /// <summary>k = min(rows, cols).</summary>
        public int Count => S.Length;

        /// <summary>u_j.</summary>
        public ReadOnlySpan<double> UColumn(int j) => U.AsSpan(j * Rows, Rows);

        /// <summary>v_j.</summary>
        public ReadOnlySpan<double> VColumn(int j) => V.AsSpan(j * Cols, Cols);
    }

    /// <summary>
    /// SVD of the row-major <paramref name="rows"/> × <paramref name="cols"/> matrix <paramref name="a"/>;
    /// <paramref name="parallel"/> bounds the threads of a sweep (null: the default options).
    /// </summary>
    public static Result Decompose(ReadOnlySpan<double> a, int rows, int cols,
        double tolerance = DefaultTolerance, int maxSweeps = DefaultMaxSweeps, ParallelOptions? parallel = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxSweeps);
        if ((long)a.Length != (long)rows * cols) throw new ArgumentException("a must hold rows × cols values.", nameof(a));

        bool wide = rows < cols;
        int m = wide ? cols : rows, n = wide ? rows : cols;
        // W is the tall matrix (M, or Mᵀ when M is wide) stored column-major: n columns of length m.
        var w = new double[(long)m * n];
        if (wide)
        {
            a.CopyTo(w); // row i of M is column i of Mᵀ
        }
        else
        {
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < cols; j++) w[(long)j * m + i] = a[i * cols + j];
        }

        double amax = 0;
        foreach (double e in w)
        {
            if (!double.IsFinite(e)) throw new ArgumentException("The matrix has a non-finite entry.", nameof(a));
            amax = Math.Max(amax, Math.Abs(e));
        }
        int exp = 0;
        if (amax > 0)
        {
            exp = Math.Clamp(Math.ILogB(amax), -1022, 1022);
            double s = Math.ScaleB(1.0, -exp);
            for (int i = 0; i < w.Length; i++) w[i] *= s;
        }

        var v = new double[(long)n * n];
        for (int j = 0; j < n; j++) v[(long)j * n + j] = 1;

        (int sweeps, bool converged) = amax == 0 ? (0, true) : Orthogonalize(w, v, m, n, Math.Max(tolerance, Math.Sqrt(m) * Eps), maxSweeps,
            parallel ?? new ParallelOptions());

        // σ_j from the converged columns, with the scaled 2-norm so tiny columns keep their value.
        var sigma = new double[n];
        for (int j = 0; j < n; j++) sigma[j] = Norm2(w.AsSpan(j * m, m));
        var order = new int[n];
        for (int j = 0; j < n; j++) order[j] = j;
        Array.Sort(order, (x, y) => sigma[x] != sigma[y] ? sigma[y].CompareTo(sigma[x]) : x.CompareTo(y));

        var uOut = new double[(long)m * n];
        var vOut = new double[(long)n * n];
        var sOut = new double[n];
        for (int r = 0; r < n; r++)
        {
            int j = order[r];
            double sj = sigma[j];
            sOut[r] = Math.ScaleB(sj, exp);
            var src = w.AsSpan(j * m, m);
            var dst = uOut.AsSpan(r * m, m);
            if (sj > 0) for (int i = 0; i < m; i++) dst[i] = src[i] / sj;
            v.AsSpan(j * n, n).CopyTo(vOut.AsSpan(r * n, n));
        }

        // For a wide M the tall factorization was of Mᵀ = U' Σ V'ᵀ, so M = V' Σ U'ᵀ.
        double[] uFinal = wide ? vOut : uOut, vFinal = wide ? uOut : vOut;
        for (int r = 0; r < n; r++)
        {
            var u = uFinal.AsSpan(r * rows, rows);
            var vv = vFinal.AsSpan(r * cols, cols);
            // With σ = 0 one of the two is the zero vector (u when M is tall, v when wide); key on the other.
            bool useU = sOut[r] > 0 || wide;
            var key = useU ? (ReadOnlySpan<double>)u : vv;
            int at = 0;
            for (int i = 1; i < key.Length; i++) if (Math.Abs(key[i]) > Math.Abs(key[at])) at = i;
            if (key[at] < 0)
            {
                foreach (ref double e in u) e = -e;
                foreach (ref double e in vv) e = -e;
            }
        }
        return new Result(uFinal, sOut, vFinal, rows, cols, sweeps, converged);
    }

    private const double Eps = 2.220446049250313e-16; // 2^-52

    /// <summary>
    /// Hestenes sweeps on the n columns (length m) of <paramref name="w"/>, rotating <paramref name="v"/>
    /// alongside, in block-cyclic order: the columns are cut into blocks small enough that two blocks
    /// (of W and V) fit in L2; a sweep first treats the pairs inside each block, then every pair of
    /// blocks, the block pairs scheduled round-robin so each round is a set of disjoint block pairs.
    /// Every column pair is visited once per sweep, each column is loaded from L3 once per block round
    /// rather than once per pair round, and disjoint block pairs run in parallel with a fixed
    /// per-task order (so the result does not depend on the thread count).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (int Sweeps, bool Converged) Orthogonalize(double[] w, double[] v, int m, int n, double tol, int maxSweeps,
        ParallelOptions options)
    {
        if (n == 1) return (0, true);
        var norms = new double[n];
        int bs = BlockSize(m, n);
        int blocks = (n + bs - 1) / bs;
        int players = blocks + (blocks & 1); // an odd block count leaves one block idle each round
        int rounds = players - 1, pairsPerRound = players / 2;
        bool parallel = (long)m * n >= ParallelThreshold && blocks >= 4;
        var rotated = new bool[Math.Max(blocks, pairsPerRound)];

        for (int sweep = 1; sweep <= maxSweeps; sweep++)
        {
            for (int j = 0; j < n; j++) { var c = w.AsSpan(j * m, m); norms[j] = Householder.Dot(c, c); }
            Array.Clear(rotated);

            void Inside(int blk)
            {
                int lo = blk * bs, hi = Math.Min(lo + bs, n);
                bool any = false;
                for (int p = lo; p < hi; p++)
                    for (int q = p + 1; q < hi; q++) any |= Rotate(w, v, norms, m, n, p, q, tol);
                rotated[blk] |= any;
            }
            if (parallel) Parallel.For(0, blocks, options, Inside);
            else for (int blk = 0; blk < blocks; blk++) Inside(blk);

            for (int round = 0; round < rounds; round++)
            {
                void Across(int i)
                {
                    // Circle method: block players-1 is fixed, the others rotate by one per round.
                    int bi, bj;
                    if (i == 0) { bi = round; bj = players - 1; }
                    else { bi = (round + i) % (players - 1); bj = (round - i + players - 1) % (players - 1); }
                    if (bi > bj) (bi, bj) = (bj, bi);
                    if (bj >= blocks) return;
                    int pLo = bi * bs, pHi = pLo + bs, qLo = bj * bs, qHi = Math.Min(qLo + bs, n);
                    bool any = false;
                    for (int p = pLo; p < pHi; p++)
                        for (int q = qLo; q < qHi; q++) any |= Rotate(w, v, norms, m, n, p, q, tol);
                    rotated[i] |= any;
                }
                if (parallel) Parallel.For(0, pairsPerRound, options, Across);
                else for (int i = 0; i < pairsPerRound; i++) Across(i);
            }
            if (Array.IndexOf(rotated, true) < 0) return (sweep, true);
        }
        return (maxSweeps, false);
    }

    /// <summary>
    /// Columns per block: two blocks of W and V columns take 2·bs·(m + n) doubles, kept to about
    /// 256 KiB (half a typical per-core L2); at least 4 so a block pair amortizes its loads.
    /// </summary>
    private static int BlockSize(int m, int n) => Math.Clamp(256 * 1024 / (16 * (m + n)), 4, 32);

    /// <summary>Zeroes w_pᵀw_q by a plane rotation if it exceeds the tolerance; returns whether it rotated.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool Rotate(double[] w, double[] v, double[] norms, int m, int n, int p, int q, double tol)
    {
        double alpha = norms[p], beta = norms[q];
        if (alpha == 0 || beta == 0) return false;
        var wp = w.AsSpan(p * m, m);
        var wq = w.AsSpan(q * m, m);
        double gamma = Householder.Dot(wp, wq);
        if (!(Math.Abs(gamma) > tol * Math.Sqrt(alpha) * Math.Sqrt(beta))) return false;

        // t = tan θ is the smaller root of t² + 2ζt − 1 = 0, so |θ| ≤ π/4 (the rotation that converges).
        double zeta = (beta - alpha) / (2 * gamma);
        double az = Math.Abs(zeta);
        double t = az > 1e150 ? 0.5 / az : 1.0 / (az + Math.Sqrt(1 + az * az));
        if (zeta < 0) t = -t;
        double c = 1.0 / Math.Sqrt(1 + t * t), s = c * t;
        RotatePair(wp, wq, c, s);
        RotatePair(v.AsSpan(p * n, n), v.AsSpan(q * n, n), c, s);

        double na = alpha - t * gamma, nb = beta + t * gamma;
        // The updates are exact in exact arithmetic; when one cancels heavily, read the norm afresh.
        norms[p] = na > 0.25 * alpha ? na : Householder.Dot(wp, wp);
        norms[q] = nb > 0.25 * beta ? nb : Householder.Dot(wq, wq);
        return true;
    }

    /// <summary>(x, y) ← (c·x − s·y, s·x + c·y).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RotatePair(Span<double> x, Span<double> y, double c, double s)
    {
        int len = x.Length;
        ref double px = ref MemoryMarshal.GetReference(x);
        ref double py = ref MemoryMarshal.GetReference(y);
        var vc = Vector256.Create(c);
        var vs = Vector256.Create(s);
        int i = 0;
        for (; i <= len - 4; i += 4)
        {
            var a = Vector256.LoadUnsafe(ref px, (nuint)i);
            var b = Vector256.LoadUnsafe(ref py, (nuint)i);
            Vector256.FusedMultiplyAdd(vc, a, -(vs * b)).StoreUnsafe(ref px, (nuint)i);
            Vector256.FusedMultiplyAdd(vs, a, vc * b).StoreUnsafe(ref py, (nuint)i);
        }
        for (; i < len; i++)
        {
            double a = x[i], b = y[i];
            x[i] = Math.FusedMultiplyAdd(c, a, -(s * b));
            y[i] = Math.FusedMultiplyAdd(s, a, c * b);
        }
    }

    /// <summary>‖x‖₂ without overflow or underflow of the squares.</summary>
    private static double Norm2(ReadOnlySpan<double> x)
    {
        double amax = 0;
        foreach (double e in x) amax = Math.Max(amax, Math.Abs(e));
        if (amax == 0) return 0;
        int e2 = Math.Clamp(Math.ILogB(amax), -1022, 1022);
        double s = Math.ScaleB(1.0, -e2), sum = 0;
        foreach (double e in x) { double y = e * s; sum += y * y; }
        return Math.ScaleB(Math.Sqrt(sum), e2);
    }
}
