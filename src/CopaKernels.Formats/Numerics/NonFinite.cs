using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Formats.Numerics;

/// <summary>
/// Finds NaN and ±Inf in stored values of any float dtype by their bits: a value is not finite exactly
/// when its exponent field is all ones, that is when its bits with the sign cleared are at least the
/// infinity pattern (F32 0x7F800000, BF16 0x7F80, F16 0x7C00). One running maximum of the cleared bits
/// per vector: two instructions per 64 bytes, cheap enough to follow every encoder on data still in L1.
/// </summary>
public static class NonFinite
{
    /// <summary>F32 bits with the sign cleared.</summary>
    public const uint F32Magnitude = 0x7FFF_FFFF;

    /// <summary>F32 +Inf: cleared bits from here up are ±Inf or NaN.</summary>
    public const uint F32Infinity = 0x7F80_0000;

    /// <summary>BF16 or F16 bits with the sign cleared.</summary>
    public const ushort Half16Magnitude = 0x7FFF;

    /// <summary>BF16 +Inf: cleared bits from here up are ±Inf or NaN.</summary>
    public const ushort Bf16Infinity = 0x7F80;

    /// <summary>F16 +Inf: cleared bits from here up are ±Inf or NaN.</summary>
    public const ushort F16Infinity = 0x7C00;

    /// <summary>The infinity pattern of a 16-bit format (BF16 or F16); every larger cleared pattern is NaN.</summary>
    public static ushort Infinity16(DType dtype) => dtype switch
    {
        DType.BF16 => Bf16Infinity,
        DType.F16 => F16Infinity,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a 16-bit float type"),
    };

    /// <summary>Whether any of the stored values is NaN or ±Inf (F32, F16, BF16, F64).</summary>
    public static bool Any(DType dtype, ReadOnlySpan<byte> values) => dtype switch
    {
        DType.F32 => Any(MemoryMarshal.Cast<byte, uint>(values), F32Magnitude, F32Infinity),
        DType.BF16 or DType.F16 => Any(MemoryMarshal.Cast<byte, ushort>(values), Half16Magnitude, Infinity16(dtype)),
        DType.F64 => Any(MemoryMarshal.Cast<byte, ulong>(values), 0x7FFF_FFFF_FFFF_FFFFul, 0x7FF0_0000_0000_0000ul),
        _ => throw new NotSupportedException($"{dtype} is not a float type"),
    };

    /// <summary>Whether any value is NaN or ±Inf.</summary>
    public static bool Any(ReadOnlySpan<float> values) => Any(MemoryMarshal.Cast<float, uint>(values), F32Magnitude, F32Infinity);

    /// <summary>The index of the first NaN or ±Inf among the stored values, or −1.</summary>
    public static long IndexOf(DType dtype, ReadOnlySpan<byte> values)
    {
        int size = dtype.Bits() / 8;
        const int Block = 1 << 12;
        for (int i = 0; i < values.Length / size; i += Block)
        {
            var block = values.Slice(i * size, Math.Min(Block, values.Length / size - i) * size);
            if (!Any(dtype, block)) continue;
            for (int j = 0; ; j++)
                if (Any(dtype, block.Slice(j * size, size))) return i + j;
        }
        return -1;
    }

    /// <summary>Whether any element's bits, masked by <paramref name="mask"/>, reach <paramref name="infinity"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool Any<T>(ReadOnlySpan<T> bits, T mask, T infinity) where T : unmanaged, System.Numerics.IBinaryInteger<T>, System.Numerics.IUnsignedNumber<T>
    {
        ref T p = ref MemoryMarshal.GetReference(bits);
        int n = bits.Length, i = 0;
        if (Vector512.IsHardwareAccelerated && n >= Vector512<T>.Count)
        {
            var m = Vector512.Create(mask);
            var max = Vector512<T>.Zero;
            for (; i <= n - Vector512<T>.Count; i += Vector512<T>.Count)
                max = Vector512.Max(max, Vector512.LoadUnsafe(ref p, (nuint)i) & m);
            // The tail as one more (overlapping) vector: a value seen twice does not change the maximum.
            if (i < n) max = Vector512.Max(max, Vector512.LoadUnsafe(ref p, (nuint)(n - Vector512<T>.Count)) & m);
            return Vector512.GreaterThanOrEqualAny(max, Vector512.Create(infinity));
        }
        if (Vector256.IsHardwareAccelerated && n >= Vector256<T>.Count)
        {
            var m = Vector256.Create(mask);
            var max = Vector256<T>.Zero;
            for (; i <= n - Vector256<T>.Count; i += Vector256<T>.Count)
                max = Vector256.Max(max, Vector256.LoadUnsafe(ref p, (nuint)i) & m);
            if (i < n) max = Vector256.Max(max, Vector256.LoadUnsafe(ref p, (nuint)(n - Vector256<T>.Count)) & m);
            return Vector256.GreaterThanOrEqualAny(max, Vector256.Create(infinity));
        }
        T acc = T.Zero;
        for (; i < n; i++) acc = T.Max(acc, Unsafe.Add(ref p, i) & mask);
        return acc >= infinity;
    }
}
