using CopaKernels.Gpu;
using ILGPU;
using ILGPU.Runtime;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// Two small kernels of the test project, one per <see cref="KernelGrouping"/>, that go through the
/// same PTX + ptxas check as the library's kernels. They prove the pipeline (catalogue by attribute,
/// PTX for sm_80/sm_90, ptxas) independently of which library kernels exist, and they use the
/// features the real kernels rely on: views, shared memory, barriers, warp shuffles and atomics.
/// </summary>
internal static class SampleKernels
{
    /// <summary>The group size <see cref="BlockSum"/> is written for (shared memory is sized by it).</summary>
    public const int BlockSumGroupSize = 256;

    /// <summary>y[i] = a * x[i] + y[i].</summary>
    [GpuKernel(KernelGrouping.Implicit)]
    internal static void Saxpy(Index1D i, float a, ArrayView<float> x, ArrayView<float> y)
    {
        y[i] = a * x[i] + y[i];
    }

    /// <summary>
    /// Adds all of <paramref name="input"/> into <paramref name="total"/>[0]: each group reduces its
    /// slice in shared memory (tree with barriers), the last warp finishes with shuffles, and thread 0
    /// adds the group's sum atomically. Launch with groups of <see cref="BlockSumGroupSize"/> threads.
    /// </summary>
    [GpuKernel(KernelGrouping.Explicit)]
    internal static void BlockSum(ArrayView<float> input, ArrayView<float> total)
    {
        var shared = SharedMemory.Allocate<float>(BlockSumGroupSize);
        int t = Group.IdxX;
        int i = Grid.GlobalIndex.X;
        shared[t] = i < input.Length ? input[i] : 0f;
        Group.Barrier();
        for (int stride = Group.DimX / 2; stride >= Warp.WarpSize; stride /= 2)
        {
            if (t < stride)
                shared[t] += shared[t + stride];
            Group.Barrier();
        }
        if (t < Warp.WarpSize)
        {
            float v = shared[t];
            for (int offset = Warp.WarpSize / 2; offset > 0; offset /= 2)
                v += Warp.ShuffleDown(v, offset);
            if (t == 0)
                Atomic.Add(ref total[0], v);
        }
    }
}
