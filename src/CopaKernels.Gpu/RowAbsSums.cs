using CopaKernels.Kernels;
using ILGPU;
using ILGPU.Runtime;

namespace CopaKernels.Gpu;

/// <summary>
/// Family 2 on ILGPU: per-row Σ|x| and, in the same pass, Σ|x| over the entries with |x| ≥ t, optionally
/// zeroing the others (CoPA's complementary scaling, SEMANTICS §2 step 2).
/// </summary>
/// <remarks>
/// One group per row (a grid-stride loop over rows when there are more rows than groups): each thread sums
/// a strided slice in fp32, then a shared-memory tree halves the partial sums. The order of additions is
/// fixed by the row length and the group size, never by scheduling, so a result is reproducible on a given
/// device; it differs from the CPU backend's order only within fp32 rounding.
/// </remarks>
internal sealed class RowAbsSums
{
    private const int FlagMasked = 1, FlagApply = 2;

    private readonly IlgpuBackend _backend;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, int, int, ArrayView<float>, ArrayView<float>, uint, int> _kernel;

    public RowAbsSums(IlgpuBackend backend)
    {
        _backend = backend;
        _kernel = backend.Accelerator.LoadKernel<ArrayView<float>, int, int, ArrayView<float>, ArrayView<float>, uint, int>(RowAbsSumsKernel);
    }

    public void Run(IlgpuBuffer x, long offset, int rows, int cols, IlgpuBuffer sums, long sumsOffset,
        float threshold, IlgpuBuffer? masked, long maskedOffset, bool applyMask)
    {
        if (rows == 0) return;
        var sumView = sums.Floats.SubView(sumsOffset, rows);
        var maskedView = masked != null ? masked.Floats.SubView(maskedOffset, rows) : sumView;
        // The same key comparison as the CPU backend: |x| ≥ |t| on the sign-cleared bits.
        uint t = BitConverter.SingleToUInt32Bits(Math.Abs(threshold));
        int flags = (masked != null ? FlagMasked : 0) | (applyMask ? FlagApply : 0);
        // With no columns the kernel reads nothing (it only writes zero sums), and the offset may sit at the buffer's end.
        var xView = cols == 0 ? x.Floats : x.Floats.SubView(offset, (long)rows * cols);
        int groups = Math.Min(rows, 1 << 20);
        _kernel(_backend.Stream, new KernelConfig(groups, _backend.ReductionGroupSize), xView, rows, cols, sumView, maskedView, t, flags);
    }

    /// <summary>One group per row: sums[row] = Σ|x|, masked[row] = Σ|x|·[|x| ≥ t] (flag 1), x zeroed below t (flag 2).</summary>
    [GpuKernel(KernelGrouping.Explicit)]
    internal static void RowAbsSumsKernel(ArrayView<float> x, int rows, int cols, ArrayView<float> sums, ArrayView<float> masked, uint t, int flags)
    {
        var s = SharedMemory.Allocate<float>(MagnitudeSelection.MaxGroupSize);
        var m = SharedMemory.Allocate<float>(MagnitudeSelection.MaxGroupSize);
        int tid = Group.IdxX, g = Group.DimX;
        bool apply = (flags & FlagApply) != 0;
        for (int row = Grid.IdxX; row < rows; row += Grid.DimX)
        {
            long start = (long)row * cols;
            float a = 0f, b = 0f;
            for (int j = tid; j < cols; j += g)
            {
                uint key = Interop.FloatAsInt(x[start + j]) & MagnitudeKey.F32Mask;
                float v = Interop.IntAsFloat(key);
                a += v;
                if (key >= t) b += v;
                else if (apply) x[start + j] = 0f;
            }
            s[tid] = a;
            m[tid] = b;
            Group.Barrier();
            // The group size is a power of two (see IlgpuBackend.ReductionGroupSize).
            for (int w = g / 2; w > 0; w /= 2)
            {
                if (tid < w)
                {
                    s[tid] += s[tid + w];
                    m[tid] += m[tid + w];
                }
                Group.Barrier();
            }
            if (tid == 0)
            {
                sums[row] = s[0];
                if ((flags & FlagMasked) != 0) masked[row] = m[0];
            }
            Group.Barrier();
        }
    }
}
