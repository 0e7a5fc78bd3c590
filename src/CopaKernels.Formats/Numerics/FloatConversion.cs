using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace CopaKernels.Formats.Numerics;

/// <summary>
/// F16 and BF16 to and from F32. F16 goes through <see cref="TensorPrimitives"/> (it has the
/// primitive); BF16, which it lacks, is handled as raw <c>ushort</c> bits with Vector512/Vector256
/// code: widening is an exact 16-bit shift, narrowing rounds to nearest-even and maps every NaN
/// to 0x7FC0, bit-identical to PyTorch's <c>c10::BFloat16</c>.
/// </summary>
public static class FloatConversion
{
    /// <summary>BF16 bits to F32 (exact).</summary>
    public static void Bf16ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination too short", nameof(destination));
        ref ushort src = ref MemoryMarshal.GetReference(source);
        ref uint dst = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination));
        int n = source.Length, i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= n - Vector512<ushort>.Count; i += Vector512<ushort>.Count)
            {
                var (lo, hi) = Vector512.Widen(Vector512.LoadUnsafe(ref src, (nuint)i));
                Vector512.ShiftLeft(lo, 16).StoreUnsafe(ref dst, (nuint)i);
                Vector512.ShiftLeft(hi, 16).StoreUnsafe(ref dst, (nuint)(i + Vector512<uint>.Count));
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - Vector256<ushort>.Count; i += Vector256<ushort>.Count)
            {
                var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)i));
                Vector256.ShiftLeft(lo, 16).StoreUnsafe(ref dst, (nuint)i);
                Vector256.ShiftLeft(hi, 16).StoreUnsafe(ref dst, (nuint)(i + Vector256<uint>.Count));
            }
        }
        for (; i < n; i++) Unsafe.Add(ref dst, i) = (uint)Unsafe.Add(ref src, i) << 16;
    }

    /// <summary>F32 to BF16 bits, round to nearest-even, NaN → 0x7FC0 (PyTorch's rule).</summary>
    public static void SingleToBf16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination too short", nameof(destination));
        ref uint src = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(source));
        ref ushort dst = ref MemoryMarshal.GetReference(destination);
        int n = source.Length, i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= n - Vector512<ushort>.Count; i += Vector512<ushort>.Count)
            {
                var lo = Round(Vector512.LoadUnsafe(ref src, (nuint)i));
                var hi = Round(Vector512.LoadUnsafe(ref src, (nuint)(i + Vector512<uint>.Count)));
                Vector512.Narrow(lo, hi).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - Vector256<ushort>.Count; i += Vector256<ushort>.Count)
            {
                var lo = Round(Vector256.LoadUnsafe(ref src, (nuint)i));
                var hi = Round(Vector256.LoadUnsafe(ref src, (nuint)(i + Vector256<uint>.Count)));
                Vector256.Narrow(lo, hi).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        for (; i < n; i++) Unsafe.Add(ref dst, i) = SingleToBf16(Unsafe.As<uint, float>(ref Unsafe.Add(ref src, i)));
    }

    /// <summary>One F32 to BF16 bits (round to nearest-even, NaN → 0x7FC0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort SingleToBf16(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7FFF_FFFFu) > 0x7F80_0000u) return 0x7FC0;
        return (ushort)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }

    /// <summary>Sixteen BF16 values to F32 (exact): the widening of <see cref="Bf16ToSingle(ReadOnlySpan{ushort}, Span{float})"/>, in registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Bf16ToSingle(Vector256<ushort> bits) =>
        Vector512.ShiftLeft(Vector512.WidenLower(Vector512.Create(bits, bits)), 16).AsSingle();

    /// <summary>Sixteen F32 values to BF16 bits, rounded as <see cref="SingleToBf16(ReadOnlySpan{float}, Span{ushort})"/> does, in registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<ushort> SingleToBf16(Vector512<float> values)
    {
        var r = Round(values.AsUInt32());
        return Vector512.Narrow(r, r).GetLower();
    }

    /// <summary>One BF16 bits to F32 (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Bf16ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Round(Vector512<uint> u)
    {
        var isNaN = Vector512.GreaterThan(u & Vector512.Create(0x7FFF_FFFFu), Vector512.Create(0x7F80_0000u));
        var r = (u + Vector512.Create(0x7FFFu) + (Vector512.ShiftRightLogical(u, 16) & Vector512<uint>.One)) >>> 16;
        return Vector512.ConditionalSelect(isNaN, Vector512.Create(0x7FC0u), r);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Round(Vector256<uint> u)
    {
        var isNaN = Vector256.GreaterThan(u & Vector256.Create(0x7FFF_FFFFu), Vector256.Create(0x7F80_0000u));
        var r = (u + Vector256.Create(0x7FFFu) + (Vector256.ShiftRightLogical(u, 16) & Vector256<uint>.One)) >>> 16;
        return Vector256.ConditionalSelect(isNaN, Vector256.Create(0x7FC0u), r);
    }

    /// <summary>F16 to F32 (exact), through <see cref="TensorPrimitives.ConvertToSingle(ReadOnlySpan{Half}, Span{float})"/>.</summary>
    public static void HalfToSingle(ReadOnlySpan<ushort> source, Span<float> destination) =>
        TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<ushort, Half>(source), destination);

    /// <summary>F32 to F16 (round to nearest-even), through <see cref="TensorPrimitives.ConvertToHalf(ReadOnlySpan{float}, Span{Half})"/>.</summary>
    public static void SingleToHalf(ReadOnlySpan<float> source, Span<ushort> destination) =>
        TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<ushort, Half>(destination));
}
