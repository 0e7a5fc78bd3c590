using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels.Reference;

namespace CopaKernels.Bench;

/// <summary>
/// Family 1 at realistic shapes, side by side with one read pass of TensorPrimitives.SumOfMagnitudes
/// over the same tensor (the floor: any exact selection must read every element once). The Ratio
/// column is the acceptance number (target: select with mask ≤ 3× the baseline on 16M;
/// the mask's time is RestoreThenTrim − RestoreOnly).
/// </summary>
[Config(typeof(ThroughputConfig))]
public class SelectionBenchmarks : IBytesPerOp
{
    [Params("16x4096", "4096x16", "14336x16", "1M", "16M", "64M")]
    public string Shape = "16M";

    private static long Elements(string shape) => shape switch
    {
        "16x4096" or "4096x16" => 16 * 4096,
        "14336x16" => 14336 * 16,
        "1M" => 1 << 20,
        "16M" => 16 << 20,
        "64M" => 64 << 20,
        _ => throw new ArgumentException(shape),
    };

    private readonly CpuBackend _backend = new();
    private float[] _data = [];
    private KernelBuffer? _buffer;
    private long _n;

    [GlobalSetup]
    public void Setup()
    {
        _n = Elements(Shape);
        var rng = new Random(1);
        _data = new float[_n];
        for (long i = 0; i < _n; i++) _data[i] = (float)((rng.NextDouble() - 0.5) * 0.04);
        _buffer = _backend.Allocate(_n * 4);
        Restore();
        if (_n <= 1 << 20)
        {
            var expected = (float[])_data.Clone();
            var want = ReferenceMagnitudeSelection.Select(expected, 0.2);
            var got = _backend.SelectByMagnitude(_buffer, new TensorRange(0, _n), 0.2);
            if (want != got) throw new InvalidOperationException($"selection differs from the reference: {want} vs {got}");
            Restore();
        }
    }

    private void Restore() => _backend.Upload(MemoryMarshal.AsBytes(_data.AsSpan()), _buffer!, 0);

    [GlobalCleanup]
    public void Cleanup() => _buffer?.Dispose();

    [Benchmark(Baseline = true)]
    public float SumOfMagnitudes() => TensorPrimitives.SumOfMagnitudes(_data);

    [Benchmark]
    public SelectionResult ThresholdOnly() => _backend.SelectByMagnitude(_buffer!, new TensorRange(0, _n), 0.2, applyMask: false);

    // The mask works in place, so each call first restores the tensor; RestoreOnly times that copy
    // alone, and RestoreThenTrim − RestoreOnly is the trim (threshold and mask).
    [Benchmark]
    public void RestoreOnly() => Restore();

    [Benchmark]
    public SelectionResult RestoreThenTrim()
    {
        Restore();
        return _backend.SelectByMagnitude(_buffer!, new TensorRange(0, _n), 0.2);
    }

    public long BytesPerOp(BenchmarkCase benchmark) => Elements((string)benchmark.Parameters["Shape"]) * 4;
}

/// <summary>
/// The batched selection over a full LoRA factor set (32 layers × 7 projections of a Llama-7B shape,
/// r = 16: 224 A's and 224 B's) against one selection over a single tensor of the same total size.
/// Target: the batch at ≥ 50% of the single-tensor throughput (threshold only, so calls need no restore;
/// `copa bench` measures the same with the mask).
/// </summary>
[Config(typeof(ThroughputConfig))]
public class BatchedSelectionBenchmarks : IBytesPerOp
{
    private readonly CpuBackend _backend = new();
    private float[] _data = [];
    private KernelBuffer? _buffer;
    private TensorRange[] _ranges = [];
    private readonly SelectionResult[] _results = new SelectionResult[448];

    internal static List<long> FactorSizes()
    {
        var sizes = new List<long>();
        for (int l = 0; l < 32; l++)
            foreach (var (dOut, dIn) in new[] { (4096, 4096), (4096, 4096), (4096, 4096), (4096, 4096), (11008, 4096), (11008, 4096), (4096, 11008) })
            {
                sizes.Add(16L * dIn);
                sizes.Add(dOut * 16L);
            }
        return sizes;
    }

    [GlobalSetup]
    public void Setup()
    {
        var sizes = FactorSizes();
        long total = sizes.Sum();
        var rng = new Random(2);
        _data = new float[total];
        for (long i = 0; i < total; i++) _data[i] = (float)((rng.NextDouble() - 0.5) * 0.04);
        _buffer = _backend.Allocate(total * 4);
        _ranges = new TensorRange[sizes.Count];
        long off = 0;
        for (int i = 0; i < sizes.Count; i++) { _ranges[i] = new TensorRange(off, sizes[i]); off += sizes[i]; }
        Restore();
    }

    private void Restore() => _backend.Upload(MemoryMarshal.AsBytes(_data.AsSpan()), _buffer!, 0);

    // Threshold only (non-destructive), so no restore is needed between calls.
    [Benchmark(Baseline = true)]
    public SelectionResult OneTensorOfTheSameSize() => _backend.SelectByMagnitude(_buffer!, new TensorRange(0, _data.LongLength), 0.2, applyMask: false);

    [Benchmark]
    public void Batched448Factors() => _backend.SelectByMagnitudeBatched(_buffer!, _ranges, 0.2, _results, applyMask: false);

    public long BytesPerOp(BenchmarkCase benchmark) => FactorSizes().Sum() * 4;
}
