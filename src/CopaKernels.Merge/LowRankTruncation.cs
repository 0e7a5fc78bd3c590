using System.Runtime.Intrinsics;
using CopaKernels.Merge.Linalg;

namespace CopaKernels.Merge;

/// <summary>How the kept singular values Σ_N are distributed between the two output factors.</summary>
public enum SigmaPlacement
{
    /// <summary>
    /// B' = Q_B U_N diag(√Σ_N), A' = diag(√Σ_N) V_Nᵀ Q_Aᵀ (the default). Both factors then carry the same
    /// scale (B'ᵀB' = A'A'ᵀ = Σ_N), which keeps them comparable for further fine-tuning or merging.
    /// </summary>
    Split,

    /// <summary>
    /// B' = Q_B U_N Σ_N, A' = V_Nᵀ Q_Aᵀ (A' has orthonormal rows). This is the split PEFT's SVD-based
    /// rank reduction in <c>add_weighted_adapter</c> produces (lora_B = U·diag(S), lora_A = Vh).
    /// </summary>
    IntoB,
}

/// <summary>The result of <see cref="LowRankTruncation.Truncate"/>.</summary>
/// <param name="B">B', d_out × N, row-major.</param>
/// <param name="A">A', N × d_in, row-major.</param>
/// <param name="Rank">N, the rank of the output pair.</param>
/// <param name="SingularValues">
/// All R singular values of B·A, descending. At most min(d_out, d_in, R) can be nonzero; when
/// min(d_out, d_in) &lt; R the trailing entries are exactly zero.
/// </param>
/// <param name="DiscardedFrobenius">
/// √(Σ_{i≥N} σ_i²), which by Eckart–Young is ‖B·A − B'A'‖_F in exact arithmetic (the float32 rounding of
/// the emitted factors adds about 1e-7·‖B·A‖_F on top).
/// </param>
/// <param name="RelativeError">
/// ‖B·A − B'A'‖_F / ‖B·A‖_F = <paramref name="DiscardedFrobenius"/> / √(Σ σ_i²), in exact arithmetic;
/// 0 when B·A = 0.
/// </param>
public sealed record TruncationResult(
    float[] B, float[] A, int Rank, double[] SingularValues, double DiscardedFrobenius, double RelativeError);

/// <summary>
/// The exact re-rank of a low-rank product: the best rank-N approximation (Eckart–Young, Frobenius) of
/// ΔW = B·A, computed without forming the d_out × d_in product.
/// </summary>
/// <remarks>
/// <para>Algorithm, all in double. (1) Householder QR of B = Q_B R_B and of Aᵀ = Q_A R_A; with
/// p_B = min(d_out, R) and p_A = min(d_in, R), Q_B is d_out × p_B, R_B is p_B × R, likewise for A. Then
/// B·A = Q_B (R_B R_Aᵀ) Q_Aᵀ. (2) SVD of the small core C = R_B R_Aᵀ (p_B × p_A) = U Σ Vᵀ by one-sided
/// Jacobi (hand-written: no suitable .NET SVD library is available here). (3) B·A = (Q_B U) Σ (Q_A V)ᵀ
/// is an SVD of the product, so keeping the leading N triplets is the optimal truncation; Q_B and Q_A
/// are applied to the N kept vectors implicitly from the Householder reflectors.</para>
/// <para>Cost O((d_out + d_in)·R² + R³) time and O((d_out + d_in)·R + R²) memory. Results are
/// deterministic (independent of thread count and scheduling): parallel loops only split work over
/// independent columns, and the SVD fixes the order and signs of its triplets.</para>
/// <para>Σ placement: the default <see cref="SigmaPlacement.Split"/> gives each factor √Σ_N, so B' and A'
/// have the same scale (B'ᵀB' = A'A'ᵀ = Σ_N), which suits further fine-tuning or merging of the pair;
/// <see cref="SigmaPlacement.IntoB"/> puts all of Σ_N into B', as PEFT's SVD-based rank reduction does.</para>
/// <para>The product is taken exactly as given: any adapter scaling (e.g. LoRA's α/r) the caller wants
/// folded in must already be in B or A, and the output pair reproduces B·A with scaling 1.</para>
/// <para>Triplets with σ = 0 (N beyond the rank of B·A) are emitted as zero columns of B' and zero rows
/// of A' under either placement. When N ≥ the numerical rank the output reproduces B·A up to rounding.</para>
/// </remarks>
public static class LowRankTruncation
{
    /// <summary>
    /// Returns the best rank-<paramref name="newRank"/> approximation B'·A' of
    /// <paramref name="b"/>·<paramref name="a"/>, its singular values and its truncation error.
    /// </summary>
    /// <param name="b">B, <paramref name="dOut"/> × <paramref name="rank"/>, row-major.</param>
    /// <param name="a">A, <paramref name="rank"/> × <paramref name="dIn"/>, row-major.</param>
    /// <param name="dOut">Rows of B (d_out).</param>
    /// <param name="rank">Inner dimension R of the input pair.</param>
    /// <param name="dIn">Columns of A (d_in).</param>
    /// <param name="newRank">N, 0 ≤ N ≤ R. N = 0 returns empty factors.</param>
    /// <param name="placement">How Σ_N is split between B' and A'.</param>
    /// <param name="parallel">
    /// Bounds the threads of the QR, core and SVD loops (a merge passes its run's options, so
    /// <c>--threads</c> holds here too); null means <c>new ParallelOptions()</c>. The result does not
    /// depend on it.
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException">A dimension is not positive, or N is outside [0, R].</exception>
    /// <exception cref="ArgumentException">A span has the wrong length or holds a NaN or infinity.</exception>
    public static TruncationResult Truncate(ReadOnlySpan<float> b, ReadOnlySpan<float> a, int dOut, int rank, int dIn,
        int newRank, SigmaPlacement placement = SigmaPlacement.Split, ParallelOptions? parallel = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(dOut);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rank);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(dIn);
        if (newRank < 0 || newRank > rank)
            throw new ArgumentOutOfRangeException(nameof(newRank), newRank,
                $"The new rank N = {newRank} must lie in [0, R] where R = {rank} is the inner dimension of the input pair; " +
                "a re-rank cannot raise the rank of B·A.");
        if (!Enum.IsDefined(placement)) throw new ArgumentOutOfRangeException(nameof(placement), placement, "Unknown SigmaPlacement.");
        if ((long)dOut * newRank > Array.MaxLength) throw new ArgumentException("The factors are too large for one array.");
        parallel ??= new ParallelOptions();
        var (qrB, qrA, svd) = Decompose(b, a, dOut, rank, dIn, parallel);
        int pB = qrB.Reflectors, pA = qrA.Reflectors;
        int k = svd.Count;

        var singular = new double[rank];
        Array.Copy(svd.S, singular, k);
        (double discarded, double relative) = TailNorms(singular, newRank);

        // Kept triplets with σ > 0 form a prefix (σ is sorted descending).
        int live = 0;
        while (live < Math.Min(newRank, k) && svd.S[live] > 0) live++;

        var outB = new double[(long)dOut * live];
        var outA = new double[(long)dIn * live];
        for (int j = 0; j < live; j++)
        {
            double s = svd.S[j];
            double fB = placement == SigmaPlacement.Split ? Math.Sqrt(s) : s;
            double fA = placement == SigmaPlacement.Split ? Math.Sqrt(s) : 1.0;
            var u = svd.UColumn(j);
            var v = svd.VColumn(j);
            for (int i = 0; i < pB; i++) outB[(long)j * dOut + i] = u[i] * fB;
            for (int i = 0; i < pA; i++) outA[(long)j * dIn + i] = v[i] * fA;
        }
        qrB.ApplyQ(outB, live, parallel);
        qrA.ApplyQ(outA, live, parallel);

        // B' row-major d_out × N: transpose the live columns; columns live..N-1 stay zero.
        var bPrime = new float[(long)dOut * newRank];
        const int Tile = 64;
        for (int i0 = 0; i0 < dOut; i0 += Tile)
        {
            int i1 = Math.Min(i0 + Tile, dOut);
            for (int j = 0; j < live; j++)
            {
                long src = (long)j * dOut;
                for (int i = i0; i < i1; i++) bPrime[(long)i * newRank + j] = (float)outB[src + i];
            }
        }
        // A' row-major N × d_in: its rows are exactly the columns of Q_A·(scaled V_N).
        var aPrime = new float[(long)newRank * dIn];
        for (long i = 0; i < outA.Length; i++) aPrime[i] = (float)outA[i];

        return new TruncationResult(bPrime, aPrime, newRank, singular, discarded, relative);
    }

    /// <summary>
    /// All R singular values of <paramref name="b"/>·<paramref name="a"/>, descending (the trailing ones are 0
    /// when the product's rank is below R), without forming the product: the exact spectrum of a LoRA update
    /// (multiply by |scale| for scale·B·A).
    /// </summary>
    /// <remarks>
    /// The same factorisation as <see cref="Truncate"/>, B = Q_B R_B and Aᵀ = Q_A R_A, then the SVD of the
    /// core R_B R_Aᵀ, but with R_B and R_A taken by Cholesky-QR: from the Gram matrices BᵀB and AAᵀ
    /// (accumulated in double with SIMD dot products), R is their Cholesky factor (RᵀR = BᵀB), since Q is
    /// never needed for singular values alone. That costs (d_out + d_in)·R²/2 multiply-adds in vector
    /// registers, against Householder's 2(d_out + d_in)·R² in scalar steps. A rank term whose column of B or
    /// row of A is all zero is dropped first (it adds nothing to B·A); where a Gram matrix is still not
    /// positive definite to working precision (dependent factors, or R above d_out or d_in), the
    /// Householder path of <see cref="Truncate"/> decides instead. Cholesky-QR's R carries a relative
    /// error of about ε·κ², κ the factor's condition number: singular values far below σ_max·√ε·κ lose
    /// digits, which a spectrum on a log scale does not show.
    /// </remarks>
    /// <exception cref="ArgumentOutOfRangeException">A dimension is not positive.</exception>
    /// <exception cref="ArgumentException">A span has the wrong length or holds a NaN or infinity.</exception>
    public static double[] SingularValues(ReadOnlySpan<float> b, ReadOnlySpan<float> a, int dOut, int rank, int dIn,
        ParallelOptions? parallel = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(dOut);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rank);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(dIn);
        if (b.Length != (long)dOut * rank) throw new ArgumentException($"b holds {b.Length} values; d_out × R = {dOut} × {rank}.", nameof(b));
        if (a.Length != (long)rank * dIn) throw new ArgumentException($"a holds {a.Length} values; R × d_in = {rank} × {dIn}.", nameof(a));
        var gB = Gram(b, rank, dOut, transposed: true, nameof(b));
        double[]? fast;
        try
        {
            var gA = Gram(a, rank, dIn, transposed: false, nameof(a));
            try { fast = FromGrams(gB, gA, dOut, rank, dIn, parallel); }
            finally { System.Buffers.ArrayPool<double>.Shared.Return(gA); }
        }
        finally { System.Buffers.ArrayPool<double>.Shared.Return(gB); }
        if (fast != null) return fast;
        var singular = new double[rank];
        var (_, _, exact) = Decompose(b, a, dOut, rank, dIn, parallel ?? new ParallelOptions());
        Array.Copy(exact.S, singular, exact.Count);
        return singular;
    }

    /// <summary>
    /// σ of B·A from the Gram matrices BᵀB and AAᵀ (R × R, see <see cref="SingularValues"/>): Cholesky of each and the
    /// singular values of the core; null where a Gram matrix is not positive definite to working precision, and
    /// the factors themselves must decide (Householder). The R factors come from the pool: at R = 128 each is
    /// 128 KB, which the runtime would otherwise place in the large-object heap, collected only with the oldest
    /// generation.
    /// </summary>
    internal static double[]? FromGrams(double[] gB, double[] gA, int dOut, int rank, int dIn, ParallelOptions? parallel)
    {
        var singular = new double[rank];
        // Terms whose B column or A row is zero add nothing to B·A.
        var live = new List<int>(rank);
        for (int k = 0; k < rank; k++) if (gB[k * rank + k] > 0 && gA[k * rank + k] > 0) live.Add(k);
        int n = live.Count;
        if (n == 0) return singular;
        if (n > Math.Min(dOut, dIn)) return null;
        var pool = System.Buffers.ArrayPool<double>.Shared;
        var (rB, rA) = (pool.Rent(n * n), pool.Rent(n * n));
        try
        {
            if (!Cholesky(gB, rank, live, rB) || !Cholesky(gA, rank, live, rA)) return null;
            var core = Core(rB, rA, n);
            if (BidiagonalSvd.Values(core, n, n) is { } values)
            {
                Array.Copy(values, singular, n);
                return singular;
            }
            var svd = JacobiSvd.Decompose(Core(rB, rA, n), n, n, parallel: parallel);   // Values consumed the first
            Array.Copy(svd.S, singular, svd.Count);
            return singular;
        }
        finally
        {
            pool.Return(rB);
            pool.Return(rA);
        }
    }

    /// <summary>core = R_B R_Aᵀ, n × n, both R upper triangular n × n (row-major, stride n).</summary>
    private static double[] Core(double[] rB, double[] rA, int n)
    {
        var core = new double[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int k = Math.Max(i, j); k < n; k++) sum += rB[i * n + k] * rA[j * n + k];
                core[i * n + j] = sum;
            }
        return core;
    }

    /// <summary>
    /// The Gram matrix of a factor's rank vectors, count × count: A's rows (A row-major count × length) or, with
    /// <paramref name="transposed"/>, B's columns (B row-major length × count). Accumulated in double over
    /// blocks of the length, each block widened into a small buffer that stays in L2 (count × block doubles),
    /// so each value is read once and no array of the factor's size is allocated.
    /// </summary>
    /// <remarks>
    /// The buffer's rows are padded past a power of two (a stride of 2ᵏ doubles maps B's widened columns onto
    /// the same few L1 sets) and with zeros to a whole number of vectors. The upper triangle is taken in 4 × 4
    /// tiles: each step loads 8 vectors for 16 multiply-adds, which keeps the FMA units rather than the loads
    /// busy (see <see cref="Tile"/>). The order of every sum is fixed, so the result does not depend on threads.
    /// </remarks>
    private static unsafe double[] Gram(ReadOnlySpan<float> x, int count, int length, bool transposed, string name)
    {
        double[] g;
        bool finite;
        fixed (float* px = x)
        {
            nint at = (nint)px;
            (g, finite) = transposed
                ? Gram(count, length, (start, width, rows, stride) => WidenRows((float*)at + (long)start * count, count, width, rows, stride))
                : Gram(count, length, (start, width, rows, stride) => WidenColumns((float*)at + start, length, count, width, rows, stride));
        }
        if (!finite)
        {
            System.Buffers.ArrayPool<double>.Shared.Return(g);
            int bad = 0;
            while (float.IsFinite(x[bad])) bad++;
            throw new ArgumentException($"{name} has a non-finite value at index {bad}.", name);
        }
        return g;
    }

    /// <summary>
    /// Puts values [<paramref name="start"/>, + <paramref name="width"/>) of each of the rank vectors into a
    /// block: vector k's at <paramref name="rows"/> + k·<paramref name="stride"/>. Returns their sum (finite
    /// unless one is NaN or infinite: |x| ≤ float.MaxValue cannot overflow it).
    /// </summary>
    internal unsafe delegate double GramFill(int start, int width, double* rows, int stride);

    /// <summary>
    /// Rows [0, <paramref name="width"/>) of a row-major B (<paramref name="count"/> values each, contiguous) into
    /// columns of a block, eight rows at a time so that each block row receives a whole cache line per pass;
    /// returns their sum.
    /// </summary>
    internal static unsafe double WidenRows(float* b, int count, int width, double* rows, int stride)
    {
        double sum = 0;
        for (int i0 = 0; i0 < width; i0 += 8)
        {
            int h = Math.Min(8, width - i0);
            for (int k = 0; k < count; k++)
            {
                double* dst = rows + k * stride + i0;
                float* src = b + (long)i0 * count + k;
                for (int i = 0; i < h; i++) sum += dst[i] = src[(long)i * count];
            }
        }
        return sum;
    }

    /// <summary>
    /// Columns [0, <paramref name="width"/>) of a row-major A (<paramref name="count"/> rows, row k at
    /// <paramref name="a"/> + k·<paramref name="rowStride"/>) into the rows of a block, each a contiguous run
    /// widened; returns their sum.
    /// </summary>
    internal static unsafe double WidenColumns(float* a, long rowStride, int count, int width, double* rows, int stride)
    {
        double sum = 0;
        for (int k = 0; k < count; k++)
        {
            float* src = a + k * rowStride;
            double* dst = rows + k * stride;
            for (int i = 0; i < width; i++) sum += dst[i] = src[i];
        }
        return sum;
    }

    /// <summary>
    /// The Gram matrix of <paramref name="count"/> vectors of <paramref name="length"/> values, count × count
    /// (row-major, in an array from <see cref="System.Buffers.ArrayPool{T}.Shared"/> that the caller returns), from
    /// blocks of their values that <paramref name="fill"/> supplies (from memory, or from a file, so that no factor
    /// need be held whole), and whether every value was finite.
    /// </summary>
    internal static unsafe (double[] Gram, bool Finite) Gram(int count, int length, GramFill fill)
    {
        const int lanes = 4;   // Tile's Vector256<double>
        int block = GramBlock(count);
        int stride = block + 8;
        var buffer = System.Buffers.ArrayPool<double>.Shared.Rent(count * stride);   // no garbage per call
        var g = System.Buffers.ArrayPool<double>.Shared.Rent(count * count);
        Array.Clear(g, 0, count * count);
        double poison = 0;
        fixed (double* pb = buffer)
        fixed (double* pg = g)
        {
            for (int c0 = 0; c0 < length; c0 += block)
            {
                int w = Math.Min(block, length - c0);
                int padded = (w + lanes - 1) / lanes * lanes;
                poison += fill(c0, w, pb, stride);
                if (padded > w)
                    for (int k = 0; k < count; k++) new Span<double>(pb + k * stride + w, padded - w).Clear();
                int c4 = count & ~3;
                for (int j = 0; j < c4; j += 4)
                    for (int k = j; k < c4; k += 4) Tile(pb + j * stride, pb + k * stride, padded, stride, pg + j * count + k, count);
                for (int k = c4; k < count; k++)
                    for (int j = 0; j <= k; j++) pg[j * count + k] += Householder.Dot(new ReadOnlySpan<double>(pb + j * stride, padded), new ReadOnlySpan<double>(pb + k * stride, padded));
            }
        }
        System.Buffers.ArrayPool<double>.Shared.Return(buffer);
        for (int j = 0; j < count; j++)
            for (int k = j + 1; k < count; k++) g[k * count + j] = g[j * count + k];
        return (g, double.IsFinite(poison));
    }

    /// <summary>Values per vector in one block of <see cref="Gram(int, int, GramFill)"/>: count × block doubles ≈ 256 KB, in L2.</summary>
    internal static int GramBlock(int count) => Math.Clamp((1 << 15) / count, 64, 1024) & ~7;

    /// <summary>
    /// g[r·ld + c] += Σ_t x_r[t]·y_c[t] for r, c &lt; 4, where x_r = <paramref name="x"/> + r·stride, likewise y;
    /// <paramref name="length"/> a multiple of the vector width. Sixteen accumulators and eight loads fit the
    /// 32 vector registers of AVX-512 machines.
    /// </summary>
    private static unsafe void Tile(double* x, double* y, int length, int stride, double* g, int ld)
    {
        Vector256<double> a00 = default, a01 = default, a02 = default, a03 = default,
            a10 = default, a11 = default, a12 = default, a13 = default,
            a20 = default, a21 = default, a22 = default, a23 = default,
            a30 = default, a31 = default, a32 = default, a33 = default;
        for (int t = 0; t < length; t += 4)
        {
            var x0 = Vector256.Load(x + t);
            var x1 = Vector256.Load(x + stride + t);
            var x2 = Vector256.Load(x + 2 * stride + t);
            var x3 = Vector256.Load(x + 3 * stride + t);
            var y0 = Vector256.Load(y + t);
            var y1 = Vector256.Load(y + stride + t);
            var y2 = Vector256.Load(y + 2 * stride + t);
            var y3 = Vector256.Load(y + 3 * stride + t);
            a00 = Vector256.FusedMultiplyAdd(x0, y0, a00); a01 = Vector256.FusedMultiplyAdd(x0, y1, a01);
            a02 = Vector256.FusedMultiplyAdd(x0, y2, a02); a03 = Vector256.FusedMultiplyAdd(x0, y3, a03);
            a10 = Vector256.FusedMultiplyAdd(x1, y0, a10); a11 = Vector256.FusedMultiplyAdd(x1, y1, a11);
            a12 = Vector256.FusedMultiplyAdd(x1, y2, a12); a13 = Vector256.FusedMultiplyAdd(x1, y3, a13);
            a20 = Vector256.FusedMultiplyAdd(x2, y0, a20); a21 = Vector256.FusedMultiplyAdd(x2, y1, a21);
            a22 = Vector256.FusedMultiplyAdd(x2, y2, a22); a23 = Vector256.FusedMultiplyAdd(x2, y3, a23);
            a30 = Vector256.FusedMultiplyAdd(x3, y0, a30); a31 = Vector256.FusedMultiplyAdd(x3, y1, a31);
            a32 = Vector256.FusedMultiplyAdd(x3, y2, a32); a33 = Vector256.FusedMultiplyAdd(x3, y3, a33);
        }
        g[0] += Vector256.Sum(a00); g[1] += Vector256.Sum(a01); g[2] += Vector256.Sum(a02); g[3] += Vector256.Sum(a03);
        g += ld;
        g[0] += Vector256.Sum(a10); g[1] += Vector256.Sum(a11); g[2] += Vector256.Sum(a12); g[3] += Vector256.Sum(a13);
        g += ld;
        g[0] += Vector256.Sum(a20); g[1] += Vector256.Sum(a21); g[2] += Vector256.Sum(a22); g[3] += Vector256.Sum(a23);
        g += ld;
        g[0] += Vector256.Sum(a30); g[1] += Vector256.Sum(a31); g[2] += Vector256.Sum(a32); g[3] += Vector256.Sum(a33);
    }

    /// <summary>
    /// The upper Cholesky factor R (RᵀR = G) of the Gram matrix restricted to <paramref name="live"/>, n × n
    /// row-major, into <paramref name="r"/>; false when a pivot is not positive to working precision (G
    /// numerically singular there).
    /// </summary>
    private static bool Cholesky(double[] g, int rank, List<int> live, double[] r)
    {
        int n = live.Count;
        Array.Clear(r, 0, n * n);
        double maxDiag = 0;
        foreach (int k in live) maxDiag = Math.Max(maxDiag, g[k * rank + k]);
        double floor = 1e-13 * maxDiag;
        for (int i = 0; i < n; i++)
        {
            double d = g[live[i] * rank + live[i]];
            for (int p = 0; p < i; p++) d -= r[p * n + i] * r[p * n + i];
            if (!(d > floor)) return false;
            double rii = Math.Sqrt(d);
            r[i * n + i] = rii;
            for (int j = i + 1; j < n; j++)
            {
                double v = g[live[i] * rank + live[j]];
                for (int p = 0; p < i; p++) v -= r[p * n + i] * r[p * n + j];
                r[i * n + j] = v / rii;
            }
        }
        return true;
    }

    /// <summary>Steps (1) and (2): the QR factorisations of B and Aᵀ and the SVD of their core.</summary>
    private static (Householder.Factors QrB, Householder.Factors QrA, JacobiSvd.Result Svd) Decompose(
        ReadOnlySpan<float> b, ReadOnlySpan<float> a, int dOut, int rank, int dIn, ParallelOptions parallel)
    {
        long bLen = (long)dOut * rank, aLen = (long)rank * dIn;
        if (bLen > Array.MaxLength || aLen > Array.MaxLength) throw new ArgumentException("The factors are too large for one array.");
        if (b.Length != bLen) throw new ArgumentException($"b holds {b.Length} values; d_out × R = {dOut} × {rank} = {bLen}.", nameof(b));
        if (a.Length != aLen) throw new ArgumentException($"a holds {a.Length} values; R × d_in = {rank} × {dIn} = {aLen}.", nameof(a));

        // Column-major copies: B's columns, and Aᵀ's columns (= A's rows, already contiguous).
        var bCols = new double[bLen];
        TransposeToDouble(b, dOut, rank, bCols, nameof(b));
        var aCols = new double[aLen];
        for (int i = 0; i < a.Length; i++)
        {
            float e = a[i];
            if (!float.IsFinite(e)) throw new ArgumentException($"a has a non-finite value at index {i}.", nameof(a));
            aCols[i] = e;
        }

        var qrB = Householder.Factor(bCols, dOut, rank, parallel);
        var qrA = Householder.Factor(aCols, dIn, rank, parallel);
        int pB = qrB.Reflectors, pA = qrA.Reflectors;
        var core = Core(qrB.UpperR(), qrA.UpperR(), pB, pA, rank, parallel);
        var svd = JacobiSvd.Decompose(core, pB, pA, parallel: parallel);
        return (qrB, qrA, svd);
    }

    /// <summary>src (rows × cols, row-major F32) → dst column-major double, in tiles for cache reuse.</summary>
    private static void TransposeToDouble(ReadOnlySpan<float> src, int rows, int cols, double[] dst, string name)
    {
        const int Tile = 32;
        for (int i0 = 0; i0 < rows; i0 += Tile)
        {
            int i1 = Math.Min(i0 + Tile, rows);
            for (int j0 = 0; j0 < cols; j0 += Tile)
            {
                int j1 = Math.Min(j0 + Tile, cols);
                for (int i = i0; i < i1; i++)
                {
                    long row = (long)i * cols;
                    for (int j = j0; j < j1; j++)
                    {
                        float e = src[(int)(row + j)];
                        if (!float.IsFinite(e)) throw new ArgumentException($"{name} has a non-finite value at index {row + j}.", name);
                        dst[(long)j * rows + i] = e;
                    }
                }
            }
        }
    }

    /// <summary>C = R_B R_Aᵀ (p_B × p_A, row-major); both R factors are upper trapezoidal with R columns.</summary>
    private static double[] Core(double[] rB, double[] rA, int pB, int pA, int r, ParallelOptions parallel)
    {
        var c = new double[(long)pB * pA];
        void Row(int i)
        {
            for (int l = 0; l < pA; l++)
            {
                // Both rows vanish left of their diagonal, so the sum starts at max(i, l).
                int s = Math.Max(i, l);
                c[(long)i * pA + l] = Householder.Dot(rB.AsSpan(i * r + s, r - s), rA.AsSpan(l * r + s, r - s));
            }
        }
        if ((long)pB * pA * r < 1L << 18) { for (int i = 0; i < pB; i++) Row(i); }
        else Parallel.For(0, pB, parallel, Row);
        return c;
    }

    /// <summary>(√Σ_{i≥n} σ_i², that over √Σ σ_i²), summed smallest-first on σ/σ₀ so nothing overflows.</summary>
    private static (double Discarded, double Relative) TailNorms(double[] sigma, int n)
    {
        double s0 = sigma.Length > 0 ? sigma[0] : 0;
        if (s0 == 0) return (0, 0);
        double tail = 0;
        for (int i = sigma.Length - 1; i >= n; i--) { double x = sigma[i] / s0; tail += x * x; }
        double total = tail;
        for (int i = Math.Min(n, sigma.Length) - 1; i >= 0; i--) { double x = sigma[i] / s0; total += x * x; }
        return (s0 * Math.Sqrt(tail), Math.Sqrt(tail / total));
    }
}
