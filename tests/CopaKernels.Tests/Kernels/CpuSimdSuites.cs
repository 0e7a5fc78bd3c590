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

/// <summary>The queued-transfer suite on the SIMD CPU backend (its transfers complete at once).</summary>
public sealed class CpuHostTransferTests : HostTransferSuite
{
    private static readonly CpuBackend s_backend = new();

    protected override IMergeBackend Backend => s_backend;

    protected override (int DOut, int DIn, int Rank, int TileRows) TileShape => (133, 257, 8, 16);

    protected override (int DOut, int DIn, int Rank) SlowProduct => (256, 256, 8);
}
