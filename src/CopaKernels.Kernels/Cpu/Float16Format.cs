using System.Runtime.InteropServices;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Kernels.Cpu;

/// <summary>The two 16-bit float storage formats of model files.</summary>
public enum Float16Format
{
    /// <summary>bfloat16: 8 exponent bits, 7 mantissa bits (the top half of an F32).</summary>
    BFloat16,
    /// <summary>IEEE 754 binary16 (System.Half): 5 exponent bits, 10 mantissa bits.</summary>
    Half,
}

/// <summary>The safetensors dtype of each <see cref="Float16Format"/>, and back; widening to F32.</summary>
public static class Float16Formats
{
    /// <summary>The dtype that stores values in <paramref name="format"/>.</summary>
    public static DType ToDType(this Float16Format format) => format == Float16Format.BFloat16 ? DType.BF16 : DType.F16;

    /// <summary>The 16-bit float format of <paramref name="dtype"/>, or null for any other dtype.</summary>
    public static Float16Format? Of(DType dtype) => dtype switch
    {
        DType.BF16 => Float16Format.BFloat16,
        DType.F16 => Float16Format.Half,
        _ => null,
    };

    /// <summary>16-bit values to F32 (exact), through the dtype's decoder.</summary>
    public static void Widen(ReadOnlySpan<ushort> bits, Float16Format format, Span<float> into) =>
        ElementCodec.Decode(format.ToDType(), MemoryMarshal.AsBytes(bits), into);
}
