using System.Runtime.CompilerServices;
using CopaKernels.Formats.Numerics;

namespace CopaKernels.Kernels;

/// <summary>
/// The magnitude key of a stored float: its bits with the sign cleared. The one definition used by
/// the selection (family 1) and row-sum (family 2) code of every backend: CPU (F32 and 16-bit) and
/// ILGPU kernels (CUDA, OpenCL), which use the constants (C# consts compile into the kernels).
/// </summary>
/// <remarks>
/// Why keys and not |x| as a float: for non-negative IEEE values (F32, BF16, F16 alike) the unsigned
/// integer order of the bits is the numeric order, so the k-th smallest key is the k-th smallest |x|,
/// +0 and −0 are one key, and a key at or above the format's infinity pattern is ±Inf or NaN. Integer
/// compares on the same bits give the same threshold, kept count and mask on every backend, whatever
/// its float compare does with NaN or denormals (flush-to-zero): the bit-exact parity across CPU,
/// CUDA and OpenCL rests on every backend using this one key. The bit patterns themselves are those
/// of <see cref="NonFinite"/>, which the non-finite checks use.
/// </remarks>
internal static class MagnitudeKey
{
    /// <summary>Clears the sign of F32 bits: key = bits &amp; F32Mask.</summary>
    public const uint F32Mask = NonFinite.F32Magnitude;

    /// <summary>The smallest F32 key that is not finite (+Inf); every key from here up is ±Inf or NaN.</summary>
    public const uint F32Infinity = NonFinite.F32Infinity;

    /// <summary>Clears the sign of BF16 or F16 bits: key = bits &amp; Half16Mask (the formats' infinity
    /// patterns are <see cref="NonFinite.Bf16Infinity"/> and <see cref="NonFinite.F16Infinity"/>).</summary>
    public const ushort Half16Mask = NonFinite.Half16Magnitude;

    /// <summary>The key of <paramref name="x"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Of(float x) => BitConverter.SingleToUInt32Bits(x) & F32Mask;

    /// <summary>The key of F32 <paramref name="bits"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint OfBits(uint bits) => bits & F32Mask;

    /// <summary>The key of BF16 or F16 <paramref name="bits"/>, widened to 32 bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint OfBits16(ushort bits) => (uint)(bits & Half16Mask);
}
