using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels.Reference;

namespace CopaKernels.Bench;

/// <summary>
/// Family 2 on LoRA A factors (r × d_in): plain row |x| sums, and the fused form (plain and masked
/// sums in one pass) that CoPA's complementary scale uses, against TensorPrimitives.SumOfMagnitudes
/// row by row (the baseline).
/// </summary>
[Config(typeof(ThroughputConfig))]
public class RowAbsSumsBenchmarks : IBytesPerOp
{
    [Params("16x4096", "16x14336", "128x4096")]
    public string Shape = "16x4096";

    // 64 factors per call, as a merge runs them back to back.
    private const int Factors = 64;

    private static (int Rows, int Cols) Dims(string shape) => shape switch
    {
        "16x4096" => (16, 4096),
        "16x14336" => (16, 14336),
        "128x4096" => (128, 4096),
        _ => throw new ArgumentException(shape),
    };

    private readonly CpuBackend _backend = new();
    private float[] _data = [];
    private KernelBuffer? _x, _sums, _masked;
    private int _rows, _cols;

    [GlobalSetup]
    public void Setup()
    {
        (_rows, _cols) = Dims(Shape);
        var rng = new Random(3);
        _data = new float[(long)_rows * _cols * Factors];
        for (long i = 0; i < _data.LongLength; i++) _data[i] = (float)((rng.NextDouble() - 0.5) * 0.04);
        _x = _backend.Allocate(_data.LongLength * 4);
        _backend.Upload(MemoryMarshal.AsBytes(_data.AsSpan()), _x, 0);
        _sums = _backend.Allocate(_rows * 4L);
        _masked = _backend.Allocate(_rows * 4L);
        // Check once against the reference.
        _backend.RowAbsSums(new MatrixView(_x, 0, _rows, _cols), new BufferView(_sums, 0), new RowThreshold(0.01f, new BufferView(_masked, 0)));
        var (want, wantMasked) = ReferenceRowAbsSums.Compute(_data.AsSpan(0, _rows * _cols), _rows, _cols, 0.01f);
        var got = new float[_rows];
        _backend.Download(_masked, 0, MemoryMarshal.AsBytes(got.AsSpan()));
        for (int i = 0; i < _rows; i++)
            if (Math.Abs(got[i] - wantMasked[i]) > 1e-4 * wantMasked[i]) throw new InvalidOperationException($"row {i}: {got[i]} vs {wantMasked[i]}");
    }

    [Benchmark(Baseline = true)]
    public float SumOfMagnitudesPerRow()
    {
        float s = 0;
        for (int f = 0; f < Factors; f++)
            for (int r = 0; r < _rows; r++)
                s += TensorPrimitives.SumOfMagnitudes(_data.AsSpan(((long)f * _rows + r) * _cols is var o ? (int)o : 0, _cols));
        return s;
    }

    [Benchmark]
    public void Plain()
    {
        for (int f = 0; f < Factors; f++)
            _backend.RowAbsSums(new MatrixView(_x!, (long)f * _rows * _cols, _rows, _cols), new BufferView(_sums!, 0));
    }

    [Benchmark]
    public void FusedMasked()
    {
        for (int f = 0; f < Factors; f++)
            _backend.RowAbsSums(new MatrixView(_x!, (long)f * _rows * _cols, _rows, _cols), new BufferView(_sums!, 0), new RowThreshold(0.01f, new BufferView(_masked!, 0)));
    }

    public long BytesPerOp(BenchmarkCase benchmark)
    {
        var (r, c) = Dims((string)benchmark.Parameters["Shape"]);
        return (long)r * c * Factors * 4;
    }
}
