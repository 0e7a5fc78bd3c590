using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace CopaKernels.Kernels;

/// <summary>
/// Element-typed transfers: counts and offsets in elements of the span's type <c>T</c>, as spans count them,
/// so a caller never multiplies by a size. With <c>T = float</c> the offsets are the same units as
/// <see cref="TensorRange"/>, <see cref="BufferView"/> and <see cref="MatrixView"/>.
/// </summary>
/// <remarks>
/// The byte-level members of <see cref="IMergeBackend"/> stay the primitive: the merge keeps BF16 and F16
/// factors and F32 results in one buffer. Each call here is that primitive over
/// <see cref="MemoryMarshal.AsBytes{T}(ReadOnlySpan{T})"/>, with the element offset checked for overflow.
/// </remarks>
public static class KernelTransfers
{
    /// <summary>Allocates a zero-filled buffer of <paramref name="count"/> elements of <typeparamref name="T"/>.</summary>
    public static KernelBuffer Allocate<T>(this IMergeBackend backend, long count) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(backend);
        return backend.Allocate(Bytes<T>(count, nameof(count)));
    }

    /// <summary>
    /// Copies <paramref name="source"/> into <paramref name="destination"/> starting at element
    /// <paramref name="elementOffset"/> (in elements of <typeparamref name="T"/>), as
    /// <see cref="IMergeBackend.Upload"/> does: after all queued work, returning when the copy is done.
    /// </summary>
    public static void Upload<T>(this IMergeBackend backend, ReadOnlySpan<T> source, KernelBuffer destination, long elementOffset)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(backend);
        backend.Upload(MemoryMarshal.AsBytes(source), destination, Bytes<T>(elementOffset, nameof(elementOffset)));
    }

    /// <summary>
    /// Copies elements of <paramref name="source"/> from element <paramref name="elementOffset"/> (in elements of
    /// <typeparamref name="T"/>) into <paramref name="destination"/>, as <see cref="IMergeBackend.Download"/> does:
    /// after all queued work, returning when the elements are there.
    /// </summary>
    public static void Download<T>(this IMergeBackend backend, KernelBuffer source, long elementOffset, Span<T> destination)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(backend);
        backend.Download(source, Bytes<T>(elementOffset, nameof(elementOffset)), MemoryMarshal.AsBytes(destination));
    }

    private static long Bytes<T>(long elements, string name) where T : unmanaged
    {
        ArgumentOutOfRangeException.ThrowIfNegative(elements, name);
        if (elements > long.MaxValue / Unsafe.SizeOf<T>())
            throw new ArgumentOutOfRangeException(name, $"{elements} elements of {Unsafe.SizeOf<T>()} bytes overflow a byte count");
        return elements * Unsafe.SizeOf<T>();
    }
}
