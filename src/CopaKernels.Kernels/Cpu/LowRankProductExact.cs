using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// Family 3, bit-exact form (<see cref="ProductTile.BitExact"/>): out[i,j] = fp32(Σ_k B'[i,k]·A[k,j])
/// with the products and the sum in double, k ascending from +0. The same bits on every backend.
/// </summary>
/// <remarks>
/// Every product of two fp32 values is exact in double, so it makes no difference whether a backend
/// fuses the multiply with the add: the only roundings are the additions, in a fixed order, and the
/// final one to fp32, and a fused multiply-add (used where the CPU has it) gives the same bits as a
/// multiply then an add. B' and A are widened to double once per call; a micro-tile of 4 rows × 8 columns
/// is 8 Vector256&lt;double&gt; accumulators, over column chunks whose slice of A stays in L1. Rows are
/// spread over threads; each element's sum is computed by one thread in one order, so the thread count
/// does not change a bit.
/// </remarks>
internal static unsafe class LowRankProductExact
{
    private const int MR = 4;

    /// <summary>Computes the tile (arguments already validated by <see cref="CpuBackend.LowRankProduct"/>).</summary>
    public static void Run(CpuBackend backend, ReadOnlySpan<LowRankTerm> terms, long dIn, in ProductTile tile)
    {
        int m = tile.RowCount;
        if (m == 0 || dIn == 0) return;
        int k = 0;
        foreach (var t in terms) k += t.Rank;
        float* output = ((CpuBuffer)tile.Output).Floats(tile.OutputOffset);
        if (k == 0)
        {
            new Span<float>(output, checked((int)(m * dIn))).Clear();
            return;
        }
        // B' = B·c in fp32 (then widened, exactly), rows of the tile × K in global k order; A widened
        // to double once, K × d_in. Widening is exact, so this only moves conversions out of the loop.
        var bp = GC.AllocateUninitializedArray<double>(checked(m * k), pinned: true);
        int n = checked((int)dIn);
        var ad = GC.AllocateUninitializedArray<double>(checked(k * n), pinned: true);
        int k0 = 0;
        foreach (var t in terms)
        {
            float* b = ((CpuBuffer)t.B).Floats(t.BOffset);
            float* a = ((CpuBuffer)t.A).Floats(t.AOffset);
            float* s = t.Scale is CpuBuffer sb ? sb.Floats(t.ScaleOffset) : null;
            for (int r = 0; r < t.Rank; r++)
            {
                float c = s != null ? t.Factor * s[r] : t.Factor;
                for (int i = 0; i < m; i++) bp[i * k + k0 + r] = b[(tile.RowStart + i) * t.Rank + r] * c;
                for (int j = 0; j < n; j++) ad[(long)(k0 + r) * n + j] = a[(long)r * n + j];
            }
            k0 += t.Rank;
        }
        var o = (nint)output;
        int blocks = (m + MR - 1) / MR;
        // Up to 16 micro-row blocks per work item, so each L1 slice of A serves 64 rows, while leaving
        // at least four items per thread to balance.
        int blocksPerItem = Math.Clamp(blocks / (4 * backend.Threads), 1, 16);
        int items = (blocks + blocksPerItem - 1) / blocksPerItem;
        Parallel.For(0, items, backend.Parallel, item =>
        {
            fixed (double* pb = bp)
            fixed (double* pa = ad)
            {
                int first = item * blocksPerItem, last = Math.Min(blocks, first + blocksPerItem);
                // Column chunks whose K × chunk slice of A stays in L1 while the rows go by.
                int chunk = Math.Max(8, Math.Min(n, ((16 << 10) / (8 * k)) & ~7));
                for (int j0 = 0; j0 < n; j0 += chunk)
                    for (int blk = first; blk < last; blk++)
                    {
                        int i0 = blk * MR, rows = Math.Min(MR, m - i0);
                        Block(pb + i0 * k, k, pa, n, j0, Math.Min(chunk, n - j0), (float*)o + (long)i0 * n, rows);
                    }
            }
        });
        // The exact path is bound by its double arithmetic: a second pass for the flag is noise here.
        if (tile.NonFiniteFlag is CpuBuffer flag && Formats.Numerics.NonFinite.Any(new ReadOnlySpan<float>(output, checked(m * n))))
            Volatile.Write(ref *(int*)(flag.Pointer + tile.NonFiniteFlagOffset), 1);
    }

    /// <summary>
    /// Rows i0..i0+rows (≤ MR), columns j0..j0+cols of the output: b holds the rows' B' (stride k), a the
    /// widened A (stride n). acc + b·a is the same double whether fused or not: the product is exact.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block(double* b, int k, double* a, int n, int j0, int cols, float* output, int rows)
    {
        int j = j0, end = j0 + cols;
        if (Vector256.IsHardwareAccelerated && rows == MR)
        {
            for (; j <= end - 8; j += 8)
            {
                Vector256<double> c0l = default, c0h = default, c1l = default, c1h = default;
                Vector256<double> c2l = default, c2h = default, c3l = default, c3h = default;
                double* ak = a + j;
                for (int kk = 0; kk < k; kk++, ak += n)
                {
                    var al = Vector256.Load(ak);
                    var ah = Vector256.Load(ak + 4);
                    var b0 = Vector256.Create(b[kk]);
                    var b1 = Vector256.Create(b[k + kk]);
                    var b2 = Vector256.Create(b[2 * k + kk]);
                    var b3 = Vector256.Create(b[3 * k + kk]);
                    c0l = MultiplyAdd(b0, al, c0l); c0h = MultiplyAdd(b0, ah, c0h);
                    c1l = MultiplyAdd(b1, al, c1l); c1h = MultiplyAdd(b1, ah, c1h);
                    c2l = MultiplyAdd(b2, al, c2l); c2h = MultiplyAdd(b2, ah, c2h);
                    c3l = MultiplyAdd(b3, al, c3l); c3h = MultiplyAdd(b3, ah, c3h);
                }
                Vector256.Narrow(c0l, c0h).Store(output + j);
                Vector256.Narrow(c1l, c1h).Store(output + n + j);
                Vector256.Narrow(c2l, c2h).Store(output + 2 * n + j);
                Vector256.Narrow(c3l, c3h).Store(output + 3 * n + j);
            }
        }
        // Remaining columns (and short blocks): the same sum, one element at a time.
        for (int i = 0; i < rows; i++)
            for (int jj = j; jj < end; jj++)
            {
                double acc = 0;
                for (int kk = 0; kk < k; kk++) acc += b[i * k + kk] * a[(long)kk * n + jj];
                output[(long)i * n + jj] = (float)acc;
            }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<double> MultiplyAdd(Vector256<double> x, Vector256<double> y, Vector256<double> acc) =>
        Fma.IsSupported ? Fma.MultiplyAdd(x, y, acc) : x * y + acc;
}
