using System.Runtime.InteropServices;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// Host memory of the CPU backend: 64-byte aligned native memory (no 2 GiB limit, no GC moves),
/// zero-filled on allocation. Freed blocks of common sizes are kept for reuse (see <see cref="BufferPool"/>).
/// </summary>
public sealed unsafe class CpuBuffer : KernelBuffer
{
    private readonly CpuBackend _owner;
    private void* _ptr;

    internal CpuBuffer(CpuBackend owner, long byteLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(byteLength);
        _owner = owner;
        ByteLength = byteLength;
        _ptr = BufferPool.Rent(byteLength);
        NativeMemory.Clear(_ptr, (nuint)byteLength);
        if (byteLength > 0) GC.AddMemoryPressure(byteLength);
    }

    /// <inheritdoc/>
    public override long ByteLength { get; }

    /// <inheritdoc/>
    public override IMergeBackend Owner => _owner;

    /// <summary>Start of the memory.</summary>
    public byte* Pointer => _ptr != null ? (byte*)_ptr : throw new ObjectDisposedException(nameof(CpuBuffer));

    /// <summary>Pointer to F32 element <paramref name="offset"/>.</summary>
    public float* Floats(long offset) => (float*)Pointer + offset;

    /// <summary>A span over <paramref name="length"/> elements of type <typeparamref name="T"/> starting at element <paramref name="offset"/>.</summary>
    public Span<T> Span<T>(long offset, int length) where T : unmanaged
    {
        if (offset < 0 || length < 0 || (offset + length) * sizeof(T) > ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) of {typeof(T).Name} outside a buffer of {ByteLength} bytes");
        return new Span<T>((T*)Pointer + offset, length);
    }

    /// <inheritdoc/>
    public override void Dispose()
    {
        if (_ptr == null) return;
        BufferPool.Return(_ptr, ByteLength);
        _ptr = null;
        if (ByteLength > 0) GC.RemoveMemoryPressure(ByteLength);
    }
}
