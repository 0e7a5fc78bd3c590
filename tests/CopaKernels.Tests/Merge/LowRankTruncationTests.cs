using CopaKernels.Merge;
using CopaKernels.Merge.Linalg;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// The exact re-rank of B·A (<see cref="LowRankTruncation"/>) and its building blocks: Householder QR,
/// one-sided Jacobi SVD. References are dense and independent where it matters: singular values are
/// checked against a two-sided symmetric Jacobi eigensolver on MᵀM written here, and the truncation is
/// checked against the dense SVD of the explicitly formed product.
/// </summary>
public class LowRankTruncationTests
{
    // ---------------------------------------------------------------- (a) Jacobi SVD

    [Fact]
    public void JacobiSvd_RandomSmall_ReconstructsAndMatchesEigenvaluesOfGram()
    {
        var rng = new Random(1234);
        for (int rows = 1; rows <= 12; rows++)
            for (int cols = 1; cols <= 12; cols++)
            {
                var m = Gaussian(rng, rows * cols, 1.0);
                var svd = JacobiSvd.Decompose(m, rows, cols);
                string at = $"{rows}×{cols}";
                Assert.True(svd.Converged, at);
                CheckSvd(m, rows, cols, svd, 1e-12, at);

                // σ² against the eigenvalues of the smaller Gram matrix (MᵀM or MMᵀ).
                var eig = SymmetricEigenvalues(Gram(m, rows, cols, smaller: true));
                int k = Math.Min(rows, cols);
                Assert.Equal(k, svd.Count);
                double smax2 = svd.S[0] * svd.S[0];
                for (int i = 0; i < k; i++)
                    Assert.True(Math.Abs(svd.S[i] * svd.S[i] - eig[i]) <= 1e-12 * smax2, $"{at}: σ{i}² = {svd.S[i] * svd.S[i]}, λ = {eig[i]}");
            }
    }

    [Fact]
    public void JacobiSvd_KnownSpectrum_WithRepeatsAndTinyValues()
    {
        var rng = new Random(77);
        double[] s = [3.0, 1.0, 1.0, 1e-3, 1e-6, 1e-9, 0.0];
        int rows = 11, cols = s.Length;
        var m = WithSpectrum(rng, rows, s);
        foreach (bool transpose in new[] { false, true })
        {
            var input = transpose ? Transpose(m, rows, cols) : m;
            int r = transpose ? cols : rows, c = transpose ? rows : cols;
            var svd = JacobiSvd.Decompose(input, r, c);
            CheckSvd(input, r, c, svd, 1e-13, transpose ? "wide" : "tall");
            for (int i = 0; i < s.Length; i++)
                Assert.True(Math.Abs(svd.S[i] - s[i]) <= 1e-13 * s[0], $"σ{i} = {svd.S[i]}, want {s[i]}"); // absolute: ~ε·σ_max
        }
    }

    [Fact]
    public void JacobiSvd_ZeroAndRankOne()
    {
        var zero = JacobiSvd.Decompose(new double[15], 3, 5);
        Assert.All(zero.S, x => Assert.Equal(0.0, x));
        Assert.True(zero.Converged);
        CheckSvd(new double[15], 3, 5, zero, 0, "zero");
        var one = JacobiSvd.Decompose([2.0], 1, 1);
        Assert.Equal(2.0, one.S[0]);
        Assert.Equal(1.0, one.U[0]);
        Assert.Equal(1.0, one.V[0]);
        var neg = JacobiSvd.Decompose([-2.0], 1, 1);
        Assert.Equal(2.0, neg.S[0]);
        Assert.Equal(1.0, neg.U[0]); // sign rule: u positive, v takes the sign
        Assert.Equal(-1.0, neg.V[0]);
        // Rank one: x yᵀ.
        double[] x = [1, -2, 3, 0.5], y = [4, 0, -1];
        var r1 = new double[12];
        for (int i = 0; i < 4; i++) for (int j = 0; j < 3; j++) r1[i * 3 + j] = x[i] * y[j];
        var svd = JacobiSvd.Decompose(r1, 4, 3);
        CheckSvd(r1, 4, 3, svd, 1e-14, "rank one");
        Assert.Equal(Math.Sqrt(14.25) * Math.Sqrt(17), svd.S[0], 1e-12);
        Assert.True(svd.S[1] <= 1e-14 * svd.S[0] && svd.S[2] <= 1e-14 * svd.S[0]);
    }

    // ---------------------------------------------------------------- (b) singular values only

    [Fact]
    public void BidiagonalSvd_RandomShapes_MatchJacobi()
    {
        var rng = new Random(4321);
        foreach (int rows in new[] { 1, 2, 3, 5, 8, 13, 40 })
            foreach (int cols in new[] { 1, 2, 4, 7, 13, 33 })
            {
                var m = Gaussian(rng, rows * cols, 1.0);
                var want = JacobiSvd.Decompose(m, rows, cols).S;
                var got = BidiagonalSvd.Values((double[])m.Clone(), rows, cols);
                Assert.NotNull(got);
                Assert.Equal(want.Length, got.Length);
                for (int i = 0; i < want.Length; i++)
                    Assert.True(Math.Abs(got[i] - want[i]) <= 1e-13 * want[0], $"{rows}×{cols}: σ{i} = {got[i]:R}, Jacobi {want[i]:R}");
            }
    }

    [Fact]
    public void BidiagonalSvd_KnownSpectrum_RepeatsTinyZerosAndExtremeScales()
    {
        var rng = new Random(78);
        double[] s = [3.0, 1.0, 1.0, 1e-3, 1e-6, 1e-9, 1e-14, 0.0, 0.0];
        int rows = 12, cols = s.Length;
        var m = WithSpectrum(rng, rows, s);
        foreach (double scale in new[] { 1.0, Math.ScaleB(1.0, -900), Math.ScaleB(1.0, 900) })
            foreach (bool transpose in new[] { false, true })
            {
                var input = (transpose ? Transpose(m, rows, cols) : m).Select(x => x * scale).ToArray();
                var got = BidiagonalSvd.Values(input, transpose ? cols : rows, transpose ? rows : cols)!;
                // Absolute accuracy: about ε·σ_max, the size of the rounding in forming M itself.
                for (int i = 0; i < s.Length; i++)
                    Assert.True(Math.Abs(got[i] / scale - s[i]) <= 1e-14 * s[0], $"scale {scale}, {(transpose ? "wide" : "tall")}: σ{i} = {got[i] / scale:R}, want {s[i]}");
            }
    }

    [Fact]
    public void BidiagonalSvd_ZeroDiagonalSignsAndNonFinite()
    {
        Assert.All(BidiagonalSvd.Values(new double[12], 3, 4)!, x => Assert.Equal(0.0, x));
        Assert.Equal([2.0], BidiagonalSvd.Values([-2.0], 1, 1)!);
        // A diagonal with negative and zero entries: σ = |d| sorted.
        var d = new double[16];
        d[0] = -1; d[5] = 4; d[10] = 0; d[15] = -0.25;
        Assert.Equal([4.0, 1.0, 0.25, 0.0], BidiagonalSvd.Values(d, 4, 4)!);
        // Already bidiagonal with a zero on the diagonal (the Golub–Kahan form splits there).
        double[] bd = [1, 2, 0, 0, 0, 3, 0, 0, 5];
        var want = JacobiSvd.Decompose(bd, 3, 3).S;
        var got = BidiagonalSvd.Values((double[])bd.Clone(), 3, 3)!;
        for (int i = 0; i < 3; i++) Assert.True(Math.Abs(got[i] - want[i]) <= 1e-14 * want[0], $"σ{i} = {got[i]:R}, Jacobi {want[i]:R}");
        Assert.Throws<ArgumentException>(() => BidiagonalSvd.Values([1, double.NaN], 1, 2));
        Assert.Throws<ArgumentException>(() => BidiagonalSvd.Values([1, 2, 3], 2, 2));
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(7, 3, 5)]
    [InlineData(64, 4, 63)]
    [InlineData(33, 5, 1025)]
    [InlineData(1100, 17, 130)]
    [InlineData(300, 128, 257)]
    [InlineData(6, 9, 40)]     // R above d_out: the Householder path decides
    public void SingularValues_MatchDenseSvdOfProduct(int dOut, int r, int dIn)
    {
        // Shapes cover the Gram's 4 × 4 tiles and their remainder (R mod 4), lengths that are not a whole number of
        // vectors or of blocks, and both factors; the reference forms B·A densely and takes its full Jacobi SVD.
        var rng = new Random(dOut * 31 + r * 7 + dIn);
        var b = Floats(rng, dOut * r, 1.0);
        var a = Floats(rng, r * dIn, 0.1);
        var dense = JacobiSvd.Decompose(DenseProduct(b, a, dOut, r, dIn), dOut, dIn).S;
        var got = LowRankTruncation.SingularValues(b, a, dOut, r, dIn);
        Assert.Equal(r, got.Length);
        for (int i = 0; i < r; i++)
        {
            double want = i < dense.Length ? dense[i] : 0;
            Assert.True(Math.Abs(got[i] - want) <= 1e-11 * dense[0], $"σ{i} = {got[i]:R}, dense {want:R}");
        }
    }

    [Fact]
    public void SingularValues_DependentAndZeroTerms_GiveZeros()
    {
        // Column 1 of B repeats column 0 (a Gram that is singular: the Householder fallback), and term 3 is zero in A.
        var rng = new Random(9);
        int dOut = 50, r = 5, dIn = 40;
        var b = Floats(rng, dOut * r, 1.0);
        var a = Floats(rng, r * dIn, 1.0);
        for (int i = 0; i < dOut; i++) b[i * r + 1] = b[i * r];
        for (int j = 0; j < dIn; j++) a[3 * dIn + j] = 0;
        var dense = JacobiSvd.Decompose(DenseProduct(b, a, dOut, r, dIn), dOut, dIn).S;
        var got = LowRankTruncation.SingularValues(b, a, dOut, r, dIn);
        for (int i = 0; i < r; i++)
            Assert.True(Math.Abs(got[i] - dense[i]) <= 1e-11 * dense[0], $"σ{i} = {got[i]:R}, dense {dense[i]:R}");
        Assert.True(got[3] <= 1e-11 * got[0] && got[4] <= 1e-11 * got[0]);
        Assert.All(LowRankTruncation.SingularValues(new float[dOut * r], a, dOut, r, dIn), x => Assert.Equal(0.0, x));
    }

    // ---------------------------------------------------------------- Householder

    [Theory]
    [InlineData(1, 1)]
    [InlineData(9, 4)]
    [InlineData(4, 9)]
    [InlineData(70, 40)]
    [InlineData(300, 65)]
    public void Householder_QTimesR_ReconstructsAndQIsOrthonormal(int rows, int cols)
    {
        var rng = new Random(rows * 100 + cols);
        var a = Gaussian(rng, rows * cols, 1.0); // column-major: column j = a[j*rows ..]
        a[Math.Min(2, cols - 1) * rows] = 0; // a sparse start of one column
        var original = (double[])a.Clone();
        var qr = Householder.Factor(a, rows, cols);
        int p = qr.Reflectors;
        var r = qr.UpperR();
        for (int i = 0; i < p; i++) for (int j = 0; j < Math.Min(i, cols); j++) Assert.Equal(0.0, r[i * cols + j]);
        // Q [R[:, j]; 0] must give back column j.
        var x = new double[rows * cols];
        for (int j = 0; j < cols; j++) for (int i = 0; i < p; i++) x[j * rows + i] = r[i * cols + j];
        qr.ApplyQ(x, cols);
        double scale = Frobenius(original);
        for (int t = 0; t < x.Length; t++) Assert.True(Math.Abs(x[t] - original[t]) <= 1e-13 * scale, $"entry {t}");
        // Q e_j for j < p are orthonormal.
        var e = new double[rows * p];
        for (int j = 0; j < p; j++) e[j * rows + j] = 1;
        qr.ApplyQ(e, p);
        for (int i = 0; i < p; i++)
            for (int j = 0; j < p; j++)
            {
                double d = 0;
                for (int t = 0; t < rows; t++) d += e[i * rows + t] * e[j * rows + t];
                Assert.True(Math.Abs(d - (i == j ? 1 : 0)) <= 1e-13, $"QᵀQ[{i},{j}] = {d}");
            }
    }

    // ---------------------------------------------------------------- (b) + (d) against the dense SVD

    public static TheoryData<int, int, int> SmallShapes()
    {
        var data = new TheoryData<int, int, int>();
        foreach (int dOut in new[] { 1, 7, 33, 64 })
            foreach (int dIn in new[] { 1, 7, 33, 64 })
                foreach (int r in new[] { 1, 4, 16 })
                    data.Add(dOut, dIn, r);
        return data;
    }

    [Theory]
    [MemberData(nameof(SmallShapes))]
    public void Truncate_MatchesDenseSvdOfProduct(int dOut, int dIn, int r)
    {
        var rng = new Random(dOut * 10007 + dIn * 101 + r);
        var b = Floats(rng, dOut * r, 0.05);
        var a = Floats(rng, r * dIn, 0.02);
        foreach (int n in new[] { 1, r / 2, r }.Where(x => x >= 1).Distinct())
            foreach (var placement in new[] { SigmaPlacement.Split, SigmaPlacement.IntoB })
                CheckAgainstDense(b, a, dOut, r, dIn, n, placement, $"{dOut}×{r}×{dIn} N={n} {placement}");
    }

    // ---------------------------------------------------------------- (c) rank-deficient and degenerate inputs

    [Fact]
    public void Truncate_ZeroColumnsInB()
    {
        var rng = new Random(5);
        int dOut = 40, r = 10, dIn = 30;
        var b = Floats(rng, dOut * r, 0.1);
        foreach (int zeroCol in new[] { 0, 3, 4, 9 })
            for (int i = 0; i < dOut; i++) b[i * r + zeroCol] = 0;
        var a = Floats(rng, r * dIn, 0.1);
        var res = CheckAgainstDense(b, a, dOut, r, dIn, r, SigmaPlacement.Split, "zero columns");
        double smax = res.SingularValues[0];
        for (int i = 6; i < r; i++) Assert.True(res.SingularValues[i] <= 1e-12 * smax, $"σ{i} = {res.SingularValues[i]}");
        CheckAgainstDense(b, a, dOut, r, dIn, 6, SigmaPlacement.IntoB, "zero columns, N = rank");
        CheckAgainstDense(b, a, dOut, r, dIn, 3, SigmaPlacement.Split, "zero columns, N < rank");
    }

    [Fact]
    public void Truncate_DuplicatedRowsInA_AndDependentColumnsInB()
    {
        var rng = new Random(6);
        int dOut = 25, r = 8, dIn = 50;
        var b = Floats(rng, dOut * r, 0.1);
        var a = Floats(rng, r * dIn, 0.1);
        Array.Copy(a, 1 * dIn, a, 3 * dIn, dIn);           // row 3 = row 1
        Array.Copy(a, 0, a, 6 * dIn, dIn);                 // row 6 = row 0
        for (int i = 0; i < dOut; i++) b[i * r + 7] = 2 * b[i * r + 2]; // column 7 = 2·column 2
        var res = CheckAgainstDense(b, a, dOut, r, dIn, r, SigmaPlacement.Split, "dependent");
        double smax = res.SingularValues[0];
        // Rank ≤ rank(Aᵀ) = 6: the last two singular values are rounding noise.
        Assert.True(res.SingularValues[6] <= 1e-12 * smax && res.SingularValues[7] <= 1e-12 * smax);
        CheckAgainstDense(b, a, dOut, r, dIn, 6, SigmaPlacement.Split, "dependent, N = rank");
        CheckAgainstDense(b, a, dOut, r, dIn, 2, SigmaPlacement.IntoB, "dependent, N = 2");
    }

    [Theory]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void Truncate_AllZeroFactor_GivesZeros(bool zeroB, bool zeroA)
    {
        var rng = new Random(7);
        int dOut = 12, r = 5, dIn = 9;
        var b = zeroB ? new float[dOut * r] : Floats(rng, dOut * r, 1);
        var a = zeroA ? new float[r * dIn] : Floats(rng, r * dIn, 1);
        foreach (var placement in new[] { SigmaPlacement.Split, SigmaPlacement.IntoB })
            foreach (int n in new[] { 0, 2, 5 })
            {
                var res = LowRankTruncation.Truncate(b, a, dOut, r, dIn, n, placement);
                Assert.Equal(n, res.Rank);
                Assert.Equal(dOut * n, res.B.Length);
                Assert.Equal(n * dIn, res.A.Length);
                Assert.All(res.SingularValues, x => Assert.Equal(0.0, x));
                Assert.All(res.B, x => Assert.Equal(0f, x));
                Assert.All(res.A, x => Assert.Equal(0f, x));
                Assert.Equal(0.0, res.DiscardedFrobenius);
                Assert.Equal(0.0, res.RelativeError);
            }
    }

    [Fact]
    public void Truncate_RankOneScalarsAndWideShapes()
    {
        // 1 × 1 × 1: the product is a scalar.
        var res = LowRankTruncation.Truncate([-3f], [2f], 1, 1, 1, 1);
        Assert.Equal(6.0, res.SingularValues[0], 12);
        Assert.Equal(-6.0, (double)res.B[0] * res.A[0], 5);
        Assert.Equal(Math.Sqrt(6), Math.Abs(res.B[0]), 6); // split: both factors √6 in magnitude
        Assert.Equal(Math.Sqrt(6), Math.Abs(res.A[0]), 6);
        var intoB = LowRankTruncation.Truncate([-3f], [2f], 1, 1, 1, 1, SigmaPlacement.IntoB);
        Assert.Equal(1.0, Math.Abs(intoB.A[0]), 6);
        Assert.Equal(-6.0, (double)intoB.B[0] * intoB.A[0], 5);

        // d_out < R < d_in and d_in < R < d_out: the core is min(d_out, R) × min(d_in, R).
        var rng = new Random(8);
        foreach (var (dOut, r, dIn) in new[] { (3, 12, 20), (20, 12, 3), (2, 9, 2) })
        {
            var b = Floats(rng, dOut * r, 0.3);
            var a = Floats(rng, r * dIn, 0.3);
            var full = CheckAgainstDense(b, a, dOut, r, dIn, r, SigmaPlacement.Split, $"{dOut}×{r}×{dIn}");
            int k = Math.Min(dOut, dIn);
            for (int i = k; i < r; i++) Assert.Equal(0.0, full.SingularValues[i]);
            // N beyond the rank: the extra components are zero columns / rows.
            for (int j = k; j < r; j++)
            {
                for (int i = 0; i < dOut; i++) Assert.Equal(0f, full.B[i * r + j]);
                for (int i = 0; i < dIn; i++) Assert.Equal(0f, full.A[j * dIn + i]);
            }
            CheckAgainstDense(b, a, dOut, r, dIn, 1, SigmaPlacement.IntoB, $"{dOut}×{r}×{dIn} N=1");
        }
    }

    [Fact]
    public void Truncate_NewRankZero_ReturnsEmptyFactorsAndFullError()
    {
        var rng = new Random(9);
        var b = Floats(rng, 10 * 4, 1);
        var a = Floats(rng, 4 * 6, 1);
        var res = LowRankTruncation.Truncate(b, a, 10, 4, 6, 0);
        Assert.Equal(0, res.Rank);
        Assert.Empty(res.B);
        Assert.Empty(res.A);
        Assert.Equal(4, res.SingularValues.Length);
        double dense = Frobenius(DenseProduct(b, a, 10, 4, 6));
        Assert.True(Math.Abs(res.DiscardedFrobenius - dense) <= 1e-12 * dense);
        Assert.Equal(1.0, res.RelativeError, 12);
    }

    [Fact]
    public void Truncate_RejectsBadArguments()
    {
        var b = new float[6];
        var a = new float[6];
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => LowRankTruncation.Truncate(b, a, 3, 2, 3, 3));
        Assert.Equal("newRank", ex.ParamName);
        Assert.Contains("R = 2", ex.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => LowRankTruncation.Truncate(b, a, 3, 2, 3, -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => LowRankTruncation.Truncate(b, a, 0, 2, 3, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => LowRankTruncation.Truncate(b, a, 3, 2, 3, 1, (SigmaPlacement)7));
        Assert.Throws<ArgumentException>(() => LowRankTruncation.Truncate(b, new float[5], 3, 2, 3, 1));
        Assert.Throws<ArgumentException>(() => LowRankTruncation.Truncate(new float[7], a, 3, 2, 3, 1));
        var nan = new float[6];
        nan[4] = float.NaN;
        Assert.Throws<ArgumentException>(() => LowRankTruncation.Truncate(nan, a, 3, 2, 3, 1));
        Assert.Throws<ArgumentException>(() => LowRankTruncation.Truncate(b, nan, 3, 2, 3, 1));
    }

    [Fact]
    public void Truncate_IsDeterministic()
    {
        var rng = new Random(10);
        int dOut = 700, r = 96, dIn = 500; // large enough for the parallel paths
        var b = Floats(rng, dOut * r, 0.05);
        var a = Floats(rng, r * dIn, 0.05);
        var x = LowRankTruncation.Truncate(b, a, dOut, r, dIn, 20);
        var y = LowRankTruncation.Truncate(b, a, dOut, r, dIn, 20);
        Assert.Equal(x.B, y.B);
        Assert.Equal(x.A, y.A);
        Assert.Equal(x.SingularValues, y.SingularValues);
        // And the result is still exact: checked through the Gram identities.
        CheckViaGrams(b, a, dOut, r, dIn, x, 1e-5);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Truncate_ThreadCount_GivesBitIdenticalResults(int threads)
    {
        var rng = new Random(12);
        int dOut = 700, r = 128, dIn = 500; // large enough for the parallel paths of QR, core and SVD (4 Jacobi blocks)
        var b = Floats(rng, dOut * r, 0.05);
        var a = Floats(rng, r * dIn, 0.05);
        var unbounded = LowRankTruncation.Truncate(b, a, dOut, r, dIn, 20);
        var bounded = LowRankTruncation.Truncate(b, a, dOut, r, dIn, 20,
            parallel: new ParallelOptions { MaxDegreeOfParallelism = threads });
        Assert.Equal(unbounded.B, bounded.B);
        Assert.Equal(unbounded.A, bounded.A);
        Assert.Equal(unbounded.SingularValues, bounded.SingularValues);
    }

    [Fact]
    public void Truncate_CancelledOptions_Throws()
    {
        // The options reach the parallel loops: a cancelled token stops the QR's first parallel pass,
        // and, given to the SVD alone, its first parallel sweep.
        var rng = new Random(13);
        int dOut = 700, r = 128, dIn = 500;
        var b = Floats(rng, dOut * r, 0.05);
        var a = Floats(rng, r * dIn, 0.05);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var cancelled = new ParallelOptions { CancellationToken = cts.Token };
        Assert.Throws<OperationCanceledException>(() => LowRankTruncation.Truncate(b, a, dOut, r, dIn, 20, parallel: cancelled));
        var core = new double[r * r];
        for (int i = 0; i < core.Length; i++) core[i] = rng.NextDouble() - 0.5;
        Assert.Throws<OperationCanceledException>(() => JacobiSvd.Decompose(core, r, r, parallel: cancelled));
    }

    // ---------------------------------------------------------------- (e) large smoke test

    [Fact]
    public void Truncate_Large4096_RelativeErrorMatchesSpectrum()
    {
        var rng = new Random(11);
        int dOut = 4096, dIn = 4096, r = 64, n = 16;
        var b = Floats(rng, dOut * r, 0.02);
        var a = Floats(rng, r * dIn, 0.01);
        var res = LowRankTruncation.Truncate(b, a, dOut, r, dIn, n);
        Assert.Equal(dOut * n, res.B.Length);
        Assert.Equal(n * dIn, res.A.Length);

        double tail = 0, total = 0;
        for (int i = 0; i < r; i++) { double s2 = res.SingularValues[i] * res.SingularValues[i]; total += s2; if (i >= n) tail += s2; }
        Assert.True(Math.Abs(res.RelativeError - Math.Sqrt(tail / total)) <= 1e-6, $"{res.RelativeError} vs {Math.Sqrt(tail / total)}");
        Assert.True(Math.Abs(res.DiscardedFrobenius - Math.Sqrt(tail)) <= 1e-6 * Math.Sqrt(tail));
        // ‖B·A‖_F from the R × R Grams (never the dense product): Σσ² must equal it.
        double normSq = GramInner(b, dOut, r, b, r, a, dIn, r, a, r);
        Assert.True(Math.Abs(total - normSq) <= 1e-9 * normSq, $"Σσ² = {total}, ‖BA‖² = {normSq}");
        CheckViaGrams(b, a, dOut, r, dIn, res, 1e-5);
    }

    // ---------------------------------------------------------------- checks

    /// <summary>Full comparison of a truncation with the dense SVD of the explicitly formed product.</summary>
    private static TruncationResult CheckAgainstDense(float[] b, float[] a, int dOut, int r, int dIn, int n,
        SigmaPlacement placement, string at)
    {
        var res = LowRankTruncation.Truncate(b, a, dOut, r, dIn, n, placement);
        Assert.Equal(n, res.Rank);
        Assert.Equal(dOut * n, res.B.Length);
        Assert.Equal(n * dIn, res.A.Length);
        Assert.Equal(r, res.SingularValues.Length);

        var w = DenseProduct(b, a, dOut, r, dIn);
        double wNorm = Frobenius(w);
        var dense = JacobiSvd.Decompose(w, dOut, dIn);
        Assert.True(dense.Converged, at);
        double smax = dense.S[0];
        int k = Math.Min(dOut, dIn);

        // Singular values: every one of the R, and the dense ones beyond R are noise.
        for (int i = 0; i < r; i++)
        {
            double want = i < k ? dense.S[i] : 0;
            Assert.True(Math.Abs(res.SingularValues[i] - want) <= 1e-5 * want + 1e-12 * smax,
                $"{at}: σ{i} = {res.SingularValues[i]}, dense {want}");
            if (i > 0) Assert.True(res.SingularValues[i] <= res.SingularValues[i - 1], $"{at}: not descending");
        }
        for (int i = r; i < k; i++) Assert.True(dense.S[i] <= 1e-12 * smax, $"{at}: dense σ{i} beyond R");

        var prod = DenseProduct(res.B, res.A, dOut, n, dIn);

        // B'A' against the dense rank-N truncation, when that truncation is well defined (σ_N-1 > σ_N clearly).
        bool gapOk = n >= k || dense.S[n] <= 1e-10 * smax || dense.S[n - 1] - dense.S[n] >= 1e-3 * smax;
        if (gapOk && smax > 0)
        {
            var tn = new double[dOut * dIn];
            for (int t = 0; t < Math.Min(n, k); t++)
            {
                var u = dense.UColumn(t);
                var v = dense.VColumn(t);
                for (int i = 0; i < dOut; i++)
                    for (int l = 0; l < dIn; l++) tn[i * dIn + l] += u[i] * dense.S[t] * v[l];
            }
            double diff = Frobenius(Subtract(prod, tn));
            Assert.True(diff <= 1e-5 * Frobenius(tn), $"{at}: ‖B'A' − T_N‖ = {diff}, ‖T_N‖ = {Frobenius(tn)}");
        }
        if (n == r)
        {
            double diff = Frobenius(Subtract(prod, w));
            Assert.True(diff <= 1e-5 * wNorm, $"{at}: N = R but ‖B'A' − BA‖ = {diff} vs ‖BA‖ = {wNorm}");
        }

        // (d) The reported discarded energy is the measured error (floor: the F32 rounding of the factors).
        double measured = Frobenius(Subtract(w, prod));
        Assert.True(Math.Abs(measured - res.DiscardedFrobenius) <= 1e-5 * Math.Max(res.DiscardedFrobenius, 1e-2 * wNorm),
            $"{at}: measured {measured}, reported {res.DiscardedFrobenius}");
        double wantRel = wNorm > 0 ? res.DiscardedFrobenius / wNorm : 0;
        Assert.True(Math.Abs(res.RelativeError - wantRel) <= 1e-10, $"{at}: relative {res.RelativeError} vs {wantRel}");

        CheckBalance(res, dOut, dIn, placement, at);
        return res;
    }

    /// <summary>Split: B'ᵀB' = A'A'ᵀ = diag(σ). IntoB: A'A'ᵀ = I on live components, B'ᵀB' = diag(σ²).</summary>
    private static void CheckBalance(TruncationResult res, int dOut, int dIn, SigmaPlacement placement, string at)
    {
        int n = res.Rank;
        if (n == 0) return;
        double smax = res.SingularValues[0];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double gb = 0, ga = 0;
                for (int t = 0; t < dOut; t++) gb += (double)res.B[t * n + i] * res.B[t * n + j];
                for (int t = 0; t < dIn; t++) ga += (double)res.A[i * dIn + t] * res.A[j * dIn + t];
                double s = i == j ? res.SingularValues[i] : 0;
                if (placement == SigmaPlacement.Split)
                {
                    Assert.True(Math.Abs(gb - s) <= 1e-5 * smax, $"{at}: B'ᵀB'[{i},{j}] = {gb}, want {s}");
                    Assert.True(Math.Abs(ga - s) <= 1e-5 * smax, $"{at}: A'A'ᵀ[{i},{j}] = {ga}, want {s}");
                }
                else
                {
                    Assert.True(Math.Abs(gb - s * s) <= 1e-5 * smax * smax, $"{at}: B'ᵀB'[{i},{j}] = {gb}, want {s * s}");
                    bool live = res.SingularValues[i] > 0 && res.SingularValues[j] > 0;
                    double want = i == j && live ? 1 : 0;
                    Assert.True(Math.Abs(ga - want) <= 1e-5, $"{at}: A'A'ᵀ[{i},{j}] = {ga}, want {want}");
                }
            }
    }

    /// <summary>‖BA − B'A'‖_F through R × R and R × N Grams, compared with the reported discarded energy.</summary>
    private static void CheckViaGrams(float[] b, float[] a, int dOut, int r, int dIn, TruncationResult res, double tol)
    {
        int n = res.Rank;
        double ww = GramInner(b, dOut, r, b, r, a, dIn, r, a, r);
        double wp = GramInner(b, dOut, r, res.B, n, a, dIn, r, res.A, n);
        double pp = GramInner(res.B, dOut, n, res.B, n, res.A, dIn, n, res.A, n);
        double err = Math.Sqrt(Math.Max(0, ww - 2 * wp + pp));
        Assert.True(Math.Abs(err - res.DiscardedFrobenius) <= tol * res.DiscardedFrobenius,
            $"Gram error {err} vs discarded {res.DiscardedFrobenius}");
    }

    /// <summary>⟨X₁Y₁, X₂Y₂⟩_F = Σ (X₁ᵀX₂) ∘ (Y₁Y₂ᵀ) for X row-major d_out × r, Y row-major r × d_in.</summary>
    private static double GramInner(float[] x1, int dOut, int r1, float[] x2, int r2, float[] y1, int dIn, int s1, float[] y2, int s2)
    {
        var gx = new double[r1 * r2];
        for (int t = 0; t < dOut; t++)
            for (int i = 0; i < r1; i++)
            {
                double xi = x1[t * r1 + i];
                for (int j = 0; j < r2; j++) gx[i * r2 + j] += xi * x2[t * r2 + j];
            }
        double sum = 0;
        for (int i = 0; i < r1; i++)
            for (int j = 0; j < r2; j++)
            {
                double gy = 0;
                for (int t = 0; t < dIn; t++) gy += (double)y1[i * dIn + t] * y2[j * dIn + t];
                sum += gx[i * r2 + j] * gy;
            }
        return sum;
    }

    /// <summary>Reconstruction, orthonormality, ordering and the sign rule of a thin SVD.</summary>
    private static void CheckSvd(double[] m, int rows, int cols, JacobiSvd.Result svd, double tol, string at)
    {
        int k = Math.Min(rows, cols);
        Assert.Equal(k, svd.Count);
        double norm = Frobenius(m);
        double err = 0;
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
            {
                double acc = 0;
                for (int t = 0; t < k; t++) acc += svd.U[t * rows + i] * svd.S[t] * svd.V[t * cols + j];
                double d = acc - m[i * cols + j];
                err += d * d;
            }
        Assert.True(Math.Sqrt(err) <= tol * Math.Max(norm, 1e-300), $"{at}: ‖M − UΣVᵀ‖ = {Math.Sqrt(err)}, ‖M‖ = {norm}");
        for (int t = 0; t < k; t++)
        {
            Assert.True(svd.S[t] >= 0 && (t == 0 || svd.S[t] <= svd.S[t - 1]), $"{at}: σ order");
            for (int q = 0; q < k; q++)
            {
                bool live = svd.S[t] > 0 && svd.S[q] > 0;
                double uu = 0, vv = 0;
                for (int i = 0; i < rows; i++) uu += svd.U[t * rows + i] * svd.U[q * rows + i];
                for (int j = 0; j < cols; j++) vv += svd.V[t * cols + j] * svd.V[q * cols + j];
                if (live) Assert.True(Math.Abs(uu - (t == q ? 1 : 0)) <= 1e-12, $"{at}: UᵀU[{t},{q}] = {uu}");
                if (live) Assert.True(Math.Abs(vv - (t == q ? 1 : 0)) <= 1e-12, $"{at}: VᵀV[{t},{q}] = {vv}");
            }
            if (svd.S[t] > 0)
            {
                var u = svd.UColumn(t);
                int arg = 0;
                for (int i = 1; i < u.Length; i++) if (Math.Abs(u[i]) > Math.Abs(u[arg])) arg = i;
                Assert.True(u[arg] > 0, $"{at}: u{t} sign rule");
            }
        }
    }

    // ---------------------------------------------------------------- independent reference: symmetric Jacobi

    /// <summary>Eigenvalues (descending) of a symmetric matrix by the classical two-sided cyclic Jacobi method.</summary>
    private static double[] SymmetricEigenvalues(double[,] s0)
    {
        int n = s0.GetLength(0);
        var s = (double[,])s0.Clone();
        double frob = 0;
        foreach (double x in s) frob += x * x;
        for (int sweep = 0; sweep < 100; sweep++)
        {
            double off = 0;
            for (int p = 0; p < n; p++) for (int q = p + 1; q < n; q++) off += s[p, q] * s[p, q];
            if (off <= 1e-32 * frob) break;
            for (int p = 0; p < n; p++)
                for (int q = p + 1; q < n; q++)
                {
                    if (s[p, q] == 0) continue;
                    double theta = (s[q, q] - s[p, p]) / (2 * s[p, q]);
                    double t = (theta >= 0 ? 1 : -1) / (Math.Abs(theta) + Math.Sqrt(theta * theta + 1));
                    double c = 1 / Math.Sqrt(t * t + 1), sn = t * c;
                    for (int k = 0; k < n; k++)
                    {
                        double kp = s[k, p], kq = s[k, q];
                        s[k, p] = c * kp - sn * kq;
                        s[k, q] = sn * kp + c * kq;
                    }
                    for (int k = 0; k < n; k++)
                    {
                        double pk = s[p, k], qk = s[q, k];
                        s[p, k] = c * pk - sn * qk;
                        s[q, k] = sn * pk + c * qk;
                    }
                }
        }
        var eig = new double[n];
        for (int i = 0; i < n; i++) eig[i] = s[i, i];
        Array.Sort(eig);
        Array.Reverse(eig);
        return eig;
    }

    /// <summary>MᵀM (cols ≤ rows) or MMᵀ, whichever is smaller.</summary>
    private static double[,] Gram(double[] m, int rows, int cols, bool smaller)
    {
        bool colsSide = !smaller || cols <= rows;
        int k = colsSide ? cols : rows;
        var g = new double[k, k];
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
            {
                double acc = 0;
                if (colsSide) for (int t = 0; t < rows; t++) acc += m[t * cols + i] * m[t * cols + j];
                else for (int t = 0; t < cols; t++) acc += m[i * cols + t] * m[j * cols + t];
                g[i, j] = acc;
            }
        return g;
    }

    // ---------------------------------------------------------------- data helpers

    /// <summary>Q₁·diag(s)·Q₂ᵀ, rows × s.Length, with random orthonormal Q₁ (rows × n) and Q₂ (n × n): σ = s.</summary>
    private static double[] WithSpectrum(Random rng, int rows, double[] s)
    {
        int cols = s.Length;
        var q1 = RandomOrthonormalColumns(rng, rows, cols);
        var q2 = RandomOrthonormalColumns(rng, cols, cols);
        var m = new double[rows * cols];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
            {
                double acc = 0;
                for (int t = 0; t < cols; t++) acc += q1[i * cols + t] * s[t] * q2[j * cols + t];
                m[i * cols + j] = acc;
            }
        return m;
    }

    private static double[] Gaussian(Random rng, int count, double sd)
    {
        var x = new double[count];
        for (int i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            x[i] = sd * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
        }
        return x;
    }

    private static float[] Floats(Random rng, int count, double sd) => Gaussian(rng, count, sd).Select(x => (float)x).ToArray();

    /// <summary>Orthonormal columns (row-major rows × cols) by modified Gram–Schmidt, twice.</summary>
    private static double[] RandomOrthonormalColumns(Random rng, int rows, int cols)
    {
        var q = Gaussian(rng, rows * cols, 1.0);
        for (int pass = 0; pass < 2; pass++)
            for (int j = 0; j < cols; j++)
            {
                for (int p = 0; p < j; p++)
                {
                    double d = 0;
                    for (int i = 0; i < rows; i++) d += q[i * cols + p] * q[i * cols + j];
                    for (int i = 0; i < rows; i++) q[i * cols + j] -= d * q[i * cols + p];
                }
                double nrm = 0;
                for (int i = 0; i < rows; i++) nrm += q[i * cols + j] * q[i * cols + j];
                nrm = Math.Sqrt(nrm);
                for (int i = 0; i < rows; i++) q[i * cols + j] /= nrm;
            }
        return q;
    }

    private static double[] DenseProduct(float[] b, float[] a, int dOut, int r, int dIn)
    {
        var w = new double[dOut * dIn];
        for (int i = 0; i < dOut; i++)
            for (int t = 0; t < r; t++)
            {
                double bit = b[i * r + t];
                for (int l = 0; l < dIn; l++) w[i * dIn + l] += bit * a[t * dIn + l];
            }
        return w;
    }

    private static double[] Transpose(double[] m, int rows, int cols)
    {
        var t = new double[m.Length];
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) t[j * rows + i] = m[i * cols + j];
        return t;
    }

    private static double[] Subtract(double[] x, double[] y)
    {
        var d = new double[x.Length];
        for (int i = 0; i < x.Length; i++) d[i] = x[i] - y[i];
        return d;
    }

    private static double Frobenius(double[] x)
    {
        double s = 0;
        foreach (double e in x) s += e * e;
        return Math.Sqrt(s);
    }
}
