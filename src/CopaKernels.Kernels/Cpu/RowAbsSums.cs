using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// Family 2 on the CPU: per-row Σ|x| and, in the same pass, Σ|x| over the entries with |x| ≥ t
/// (CoPA's complementary scaling needs both, SEMANTICS §2 step 2), optionally zeroing the others.
/// </summary>
/// <remarks>
/// The plain sum is <see cref="TensorPrimitives.SumOfMagnitudes(ReadOnlySpan{float})"/> (it has the
/// primitive). The fused masked form has no TensorPrimitives equivalent, so it is a Vector256 loop
/// with four independent accumulators; its order of additions is fixed by the row length alone, so
/// the result does not depend on the thread count. Rows are spread over threads in blocks.
/// </remarks>
internal static unsafe class RowAbsSums
{
    public static void Run(CpuBackend backend, CpuBuffer x, long offset, int rows, int cols, CpuBuffer sums, long sumsOffset,
        float threshold, CpuBuffer? masked, long maskedOffset, bool applyMask)
    {
        var px = (nint)x.Floats(offset);
        var ps = (nint)sums.Floats(sumsOffset);
        var pm = masked == null ? 0 : (nint)masked.Floats(maskedOffset);
        bool fused = masked != null || applyMask;
        uint t = BitConverter.SingleToUInt32Bits(Math.Abs(threshold));
        // Enough rows per task to amortise scheduling (≥ 64K elements), at most one task per row.
        int rowsPerTask = Math.Max(1, (1 << 16) / Math.Max(1, cols));
        int tasks = (rows + rowsPerTask - 1) / rowsPerTask;
        System.Threading.Tasks.Parallel.For(0, tasks, backend.Parallel, task =>
        {
            int r0 = task * rowsPerTask, r1 = Math.Min(rows, r0 + rowsPerTask);
            for (int r = r0; r < r1; r++)
            {
                float* row = (float*)px + (long)r * cols;
                if (!fused)
                {
                    ((float*)ps)[r] = TensorPrimitives.SumOfMagnitudes(new ReadOnlySpan<float>(row, cols));
                    continue;
                }
                var (s, m) = Fused(row, cols, t, applyMask);
                ((float*)ps)[r] = s;
                if (pm != 0) ((float*)pm)[r] = m;
            }
        });
    }

    /// <summary>One row: (Σ|x|, Σ|x|·[|x| ≥ t]), zeroing the entries below t when asked.</summary>
    internal static (float Sum, float Masked) Fused(float* row, int n, uint t, bool applyMask)
    {
        int i = 0;
        float sum = 0, msum = 0;
        if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            var abs = Vector256.Create((int)MagnitudeKey.F32Mask);
            var vt = Vector256.Create((int)t);
            Vector256<float> s0 = default, s1 = default, m0 = default, m1 = default;
            for (; i <= n - 16; i += 16)
            {
                var a = Vector256.Load((int*)row + i);
                var b = Vector256.Load((int*)row + i + 8);
                var ka = a & abs;
                var kb = b & abs;
                var keepA = Vector256.GreaterThanOrEqual(ka, vt);
                var keepB = Vector256.GreaterThanOrEqual(kb, vt);
                s0 += ka.AsSingle();
                s1 += kb.AsSingle();
                m0 += (ka & keepA).AsSingle();
                m1 += (kb & keepB).AsSingle();
                if (applyMask)
                {
                    (a & keepA).Store((int*)row + i);
                    (b & keepB).Store((int*)row + i + 8);
                }
            }
            sum = Vector256.Sum(s0 + s1);
            msum = Vector256.Sum(m0 + m1);
        }
        for (; i < n; i++)
        {
            uint key = MagnitudeKey.Of(row[i]);
            float a = BitConverter.UInt32BitsToSingle(key);
            sum += a;
            if (key >= t) msum += a;
            else if (applyMask) row[i] = 0f;
        }
        return (sum, msum);
    }
}
