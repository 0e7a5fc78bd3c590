using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Tests.Kernels;

/// <summary>The parity suites on the SIMD CPU backend with every core.</summary>
public sealed class CpuSelectionTests : SelectionSuite
{
    protected override IMergeBackend Backend { get; } = new CpuBackend();
}

/// <summary>The same on one thread: results must not depend on the thread count.</summary>
public sealed class CpuSingleThreadSelectionTests : SelectionSuite
{
    protected override IMergeBackend Backend { get; } = new CpuBackend(1);
}
