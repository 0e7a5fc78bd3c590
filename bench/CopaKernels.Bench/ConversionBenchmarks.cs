using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using CopaKernels.Formats.Numerics;

namespace CopaKernels.Bench;

/// <summary>F32 ⇄ BF16/F16 conversion, the first and last step of every merge of a BF16 model.</summary>
[Config(typeof(ThroughputConfig))]
public class ConversionBenchmarks : IBytesPerOp
{
    // 16M + 7 elements: a tail that no vector width divides.
    [Params(16 * 1024 * 1024 + 7)]
    public int N;

    private float[] _f32 = [];
    private ushort[] _u16 = [];

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        _f32 = new float[N];
        _u16 = new ushort[N];
        for (int i = 0; i < N; i++) _f32[i] = (float)(rng.NextDouble() * 2 - 1);
        // Check once before timing: BF16 narrowing agrees with the scalar rule.
        FloatConversion.SingleToBf16(_f32, _u16);
        for (int i = 0; i < N; i += 4099)
            if (_u16[i] != FloatConversion.SingleToBf16(_f32[i])) throw new InvalidOperationException($"bf16 mismatch at {i}");
    }

    [Benchmark] public void F32ToBf16() => FloatConversion.SingleToBf16(_f32, _u16);
    [Benchmark] public void Bf16ToF32() => FloatConversion.Bf16ToSingle(_u16, _f32);
    [Benchmark] public void F32ToF16() => FloatConversion.SingleToHalf(_f32, _u16);
    [Benchmark] public void F16ToF32() => FloatConversion.HalfToSingle(_u16, _f32);

    public long BytesPerOp(BenchmarkCase benchmark) => (long)(int)benchmark.Parameters["N"] * 6;
}
