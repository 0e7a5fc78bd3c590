using System.Runtime.InteropServices;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Formats.Numerics;

/// <summary>Decodes stored tensor bytes to F32 and encodes F32 back, for the float dtypes a merge handles.</summary>
public static class ElementCodec
{
    /// <summary>Bytes of <paramref name="dtype"/> to F32. F64 is narrowed with round-to-nearest.</summary>
    public static void Decode(DType dtype, ReadOnlySpan<byte> source, Span<float> destination)
    {
        switch (dtype)
        {
            case DType.F32: MemoryMarshal.Cast<byte, float>(source).CopyTo(destination); break;
            case DType.BF16: FloatConversion.Bf16ToSingle(MemoryMarshal.Cast<byte, ushort>(source), destination); break;
            case DType.F16: FloatConversion.HalfToSingle(MemoryMarshal.Cast<byte, ushort>(source), destination); break;
            case DType.F64:
                var d = MemoryMarshal.Cast<byte, double>(source);
                for (int i = 0; i < d.Length; i++) destination[i] = (float)d[i];
                break;
            default: throw new NotSupportedException($"{dtype} is not a float type the merge reads");
        }
    }

    /// <summary>16-bit float values (<paramref name="dtype"/> BF16 or F16) to F32, exactly.</summary>
    public static void Widen(ReadOnlySpan<ushort> bits, DType dtype, Span<float> destination)
    {
        if (dtype.As16BitFloat() is null) throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a 16-bit float type");
        Decode(dtype, MemoryMarshal.AsBytes(bits), destination);
    }

    /// <summary>F32 to bytes of <paramref name="dtype"/>, rounding to nearest-even.</summary>
    public static void Encode(DType dtype, ReadOnlySpan<float> source, Span<byte> destination)
    {
        switch (dtype)
        {
            case DType.F32: MemoryMarshal.AsBytes(source).CopyTo(destination); break;
            case DType.BF16: FloatConversion.SingleToBf16(source, MemoryMarshal.Cast<byte, ushort>(destination)); break;
            case DType.F16: FloatConversion.SingleToHalf(source, MemoryMarshal.Cast<byte, ushort>(destination)); break;
            case DType.F64:
                var d = MemoryMarshal.Cast<byte, double>(destination);
                for (int i = 0; i < source.Length; i++) d[i] = source[i];
                break;
            default: throw new NotSupportedException($"{dtype} is not a float type the merge writes");
        }
    }

    /// <summary>
    /// <see cref="Encode"/>, and whether every encoded value is finite: each block of at most 4096 elements
    /// is checked (<see cref="NonFinite"/>) right after it is encoded, while it is still in L1, so the check
    /// costs no second trip to memory. A finite F32 value can still encode as ±Inf (F16 above 65504, BF16
    /// next to F32's largest value): the check is on what is written.
    /// </summary>
    public static bool EncodeChecked(DType dtype, ReadOnlySpan<float> source, Span<byte> destination)
    {
        const int Block = 4096;
        int size = dtype.Bits() / 8;
        bool finite = true;
        for (int i = 0; i < source.Length; i += Block)
        {
            int n = Math.Min(Block, source.Length - i);
            var bytes = destination.Slice(i * size, n * size);
            Encode(dtype, source.Slice(i, n), bytes);
            finite &= !NonFinite.Any(dtype, bytes);
        }
        return finite;
    }

    /// <summary>True when <see cref="Decode"/> accepts the type.</summary>
    public static bool CanDecode(DType dtype) => dtype is DType.F32 or DType.BF16 or DType.F16 or DType.F64;
}
