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
    private GCHandle _pin; // set when the buffer is a view of a pinned managed array (CpuBackend.Wrap)

    internal CpuBuffer(CpuBackend owner, long byteLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(byteLength);
        _owner = owner;
        ByteLength = byteLength;
        _ptr = BufferPool.Rent(byteLength);
        NativeMemory.Clear(_ptr, (nuint)byteLength);
        if (byteLength > 0) GC.AddMemoryPressure(byteLength);
    }

    /// <summary>A view of <paramref name="array"/>, pinned until disposed; no copy, no clear.</summary>
    internal CpuBuffer(CpuBackend owner, float[] array)
    {
        _owner = owner;
        _pin = GCHandle.Alloc(array, GCHandleType.Pinned);
        ByteLength = (long)array.Length * sizeof(float);
        _ptr = (void*)_pin.AddrOfPinnedObject();
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
        var p = _ptr;
        if (p == null) return;
        _ptr = null;
        if (_pin.IsAllocated)
        {
            _pin.Free();
            return;
        }
        BufferPool.Return(p, ByteLength);
        if (ByteLength > 0) GC.RemoveMemoryPressure(ByteLength);
    }
}
