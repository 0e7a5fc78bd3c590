using CopaKernels.Gpu;
using CopaKernels.Kernels;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// One ILGPU backend per test class for the whole run: compiling the kernels (PoCL compiles them again
/// with clang) costs far more than a test, and xunit makes a class instance per test. Classes run in
/// parallel, so they never share one (a backend's stream is not thread-safe).
/// </summary>
internal sealed class SharedBackend(Func<IlgpuBackend> open)
{
    private readonly Lazy<IlgpuBackend> _backend = new(() =>
    {
        var b = open();
        AppDomain.CurrentDomain.ProcessExit += (_, _) => b.Dispose();
        return b;
    });

    public IlgpuBackend Value => _backend.Value;
}

/// <summary>The selection and row-sum suite on ILGPU's CPU emulator (about 100× slower: small sizes).</summary>
public sealed class IlgpuCpuSelectionTests : SelectionSuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.OpenCpuEmulator());

    protected override IMergeBackend Backend => s_backend.Value;

    protected override int MaxSize => 1 << 17;

    // Every length up to a group's worth of threads, the ones around multiples of 32, and the top end.
    protected override bool CheckEverySize(int n) => n <= 33 || n % 32 is 0 or 1 or 31 || n >= 254;

    protected override int ManyTensors => 300;

    public override void Dispose() { }
}

/// <summary>The selection and row-sum suite on the first usable OpenCL device (PoCL in CI).</summary>
[RequiresOpenCl]
public sealed class OpenClSelectionTests : SelectionSuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.Open("opencl"));

    protected override IMergeBackend Backend => s_backend.Value;

    protected override int MaxSize => 1 << 21;

    public override void Dispose() { }
}

/// <summary>The low-rank product suite on ILGPU's CPU emulator.</summary>
public sealed class IlgpuCpuLowRankProductTests : LowRankProductSuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.OpenCpuEmulator());

    protected override IMergeBackend CreateBackend(int threads) => s_backend.Value;

    protected override bool OwnsBackend => false;

    // The emulator does a few million multiply-adds a second: the first rows of the big tiles (OpenCL runs them whole).
    protected override long MaxTileElements => 16_384;
}

/// <summary>The low-rank product suite on the first usable OpenCL device.</summary>
[RequiresOpenCl]
public sealed class OpenClLowRankProductTests : LowRankProductSuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.Open("opencl"));

    protected override IMergeBackend CreateBackend(int threads) => s_backend.Value;

    protected override bool OwnsBackend => false;
}

/// <summary>The queued-transfer suite on ILGPU's CPU emulator (copies are memcpy and kernels run on the calling thread).</summary>
public sealed class IlgpuCpuHostTransferTests : HostTransferSuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.OpenCpuEmulator());

    protected override IMergeBackend Backend => s_backend.Value;

    protected override (int DOut, int DIn, int Rank, int TileRows) TileShape => (37, 29, 3, 8);

    protected override (int DOut, int DIn, int Rank) SlowProduct => (48, 64, 4);
}

/// <summary>The queued-transfer suite on the first usable OpenCL device, where copies really queue (non-blocking clEnqueue*Buffer).</summary>
[RequiresOpenCl]
public sealed class OpenClHostTransferTests : HostTransferSuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.Open("opencl"));

    protected override IMergeBackend Backend => s_backend.Value;
}
