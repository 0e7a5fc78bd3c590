using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Running;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels.Reference;

namespace CopaKernels.Bench;

/// <summary>
/// Families 3 and 4 at LLM projection shapes: the whole d_out × 4096 F32 result of B·A with inner dimension r,
/// on every core. Compare with OpenBLAS sgemm on the same shapes (bench/peers). At r = 16 the product is
/// bound by writing the output (GB/s column), at r = 128 by FMA throughput (GFLOP/s column).
/// </summary>
[Config(typeof(Config))]
public class LowRankProductBenchmarks : IFlopsPerOp, IBytesPerOp
{
    private sealed class Config : ManualConfig
    {
        public Config()
        {
            AddColumn(new GflopsPerSecondColumn());
            AddColumn(new GbPerSecondColumn());
        }
    }

    private const int DIn = 4096;

    [Params(4096, 14336)]
    public int DOut = 4096;

    [Params(16, 64, 128)]
    public int Rank = 16;

    private readonly CpuBackend _backend = new();
    private KernelBuffer? _b, _a, _c;
    private LowRankTerm[] _terms = [];

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        var b = new float[DOut * Rank];
        var a = new float[Rank * DIn];
        for (int i = 0; i < b.Length; i++) b[i] = (float)(rng.NextDouble() * 2 - 1);
        for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        _b = _backend.Allocate(b.Length * 4L);
        _a = _backend.Allocate(a.Length * 4L);
        _c = _backend.Allocate((long)DOut * DIn * 4);
        _backend.Upload(MemoryMarshal.AsBytes(b.AsSpan()), _b, 0);
        _backend.Upload(MemoryMarshal.AsBytes(a.AsSpan()), _a, 0);
        _terms = [new LowRankTerm(_b, 0, _a, 0, Rank, 1f)];

        // Check once before timing: a few whole rows against the double-precision reference.
        Product();
        foreach (int row in new[] { 0, 1, DOut / 2 + 3, DOut - 1 })
        {
            var want = ReferenceLowRankProduct.Compute([(b, a, Rank, 1f, null)], DOut, DIn, row, 1);
            var got = new float[DIn];
            _backend.Download(_c, (long)row * DIn * 4, MemoryMarshal.AsBytes(got.AsSpan()));
            for (int j = 0; j < DIn; j++)
                if (Math.Abs(got[j] - want[j]) > 1e-5 * Rank + 1e-6 * Math.Abs(want[j]))
                    throw new InvalidOperationException($"{DOut}×{Rank}×{DIn}: element ({row}, {j}) expected {want[j]:G9}, got {got[j]:G9}");
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _b?.Dispose();
        _a?.Dispose();
        _c?.Dispose();
    }

    [Benchmark]
    public void Product() => _backend.LowRankProduct(_terms, DOut, DIn, new ProductTile(0, DOut, _c!));

    public double FlopsPerOp(BenchmarkCase benchmark) =>
        2.0 * (int)benchmark.Parameters["DOut"] * (int)benchmark.Parameters["Rank"] * DIn;

    /// <summary>Output written plus factors read (the output dominates).</summary>
    public long BytesPerOp(BenchmarkCase benchmark)
    {
        long dOut = (int)benchmark.Parameters["DOut"], r = (int)benchmark.Parameters["Rank"];
        return (dOut * DIn + dOut * r + r * DIn) * 4;
    }
}
