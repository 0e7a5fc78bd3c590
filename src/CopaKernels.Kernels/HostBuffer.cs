using System.Runtime.InteropServices;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Kernels;

/// <summary>
/// Host memory a backend allocated for its queued transfers (<see cref="IMergeBackend.UploadAsync"/>,
/// <see cref="IMergeBackend.DownloadAsync"/>): native memory (no GC moves, no 2 GiB limit), page-locked
/// where the device supports it, so that a queued copy reads or writes it by DMA while the host goes on.
/// The host fills and reads it through <see cref="Span{T}"/>, within the fence rules of those calls.
/// Contents are not cleared on allocation: callers upload only what they wrote.
/// </summary>
/// <remarks>
/// Page-locked memory is a scarce resource of the whole machine and locking it costs a driver call per
/// allocation, so it pays off for buffers that serve many transfers (the tile staging of
/// <c>copa merge --output model</c>), not for one-shot staging; <see cref="IMergeBackend.AllocateHost"/>
/// lets the caller choose. Unlocked blocks come from the same reuse pool as the CPU backend's buffers.
/// </remarks>
public sealed unsafe class HostBuffer : IDisposable
{
    /// <summary>Alignment and size granularity of page-locked blocks (older CUDA drivers register whole pages only).</summary>
    internal const int PageBytes = 4096;

    private readonly long _capacity;
    private readonly bool _pooled;
    private IDisposable? _pageLock;
    private void* _ptr;

    /// <summary>Allocates the block; <paramref name="pageLock"/>, when given, page-locks it (or returns null where the device cannot).</summary>
    /// <param name="owner">The backend whose transfers use the buffer.</param>
    /// <param name="byteLength">Usable bytes.</param>
    /// <param name="pageLock">Locks [pointer, pointer + bytes) for the device, returning what unlocks it, or null when it cannot lock.</param>
    internal HostBuffer(IMergeBackend owner, long byteLength, Func<nint, long, IDisposable?>? pageLock)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(byteLength);
        Owner = owner;
        ByteLength = byteLength;
        if (pageLock == null)
        {
            _capacity = byteLength;
            _pooled = true;
            _ptr = BufferPool.Rent(byteLength);
        }
        else
        {
            _capacity = Math.Max(PageBytes, (byteLength + PageBytes - 1) / PageBytes * PageBytes);
            _ptr = NativeMemory.AlignedAlloc((nuint)_capacity, PageBytes);
            try
            {
                _pageLock = pageLock((nint)_ptr, _capacity);
            }
            catch
            {
                NativeMemory.AlignedFree(_ptr);
                _ptr = null;
                throw;
            }
        }
        if (_capacity > 0) GC.AddMemoryPressure(_capacity);
    }

    /// <summary>Usable size in bytes.</summary>
    public long ByteLength { get; }

    /// <summary>The backend whose transfers use this buffer.</summary>
    public IMergeBackend Owner { get; }

    /// <summary>
    /// Whether the device reads and writes this memory directly (CUDA with ILGPU). False on OpenCL and
    /// ILGPU's CPU emulator (ILGPU 1.5.3 cannot page-lock there) and on the CPU backend (nothing to lock
    /// for): the transfers are the same calls and follow the same rules, the driver just stages them.
    /// </summary>
    public bool PageLocked => _pageLock != null;

    /// <summary>Start of the memory (for the backends' copies).</summary>
    internal byte* Pointer => _ptr != null ? (byte*)_ptr : throw new ObjectDisposedException(nameof(HostBuffer));

    /// <summary>The last transfer queued on this buffer: <see cref="Dispose"/> waits for it before freeing the memory.</summary>
    internal TransferFence Pending { get; set; }

    /// <summary>
    /// <paramref name="length"/> elements of type <typeparamref name="T"/> from element <paramref name="elementOffset"/>
    /// (in elements of <typeparamref name="T"/>, not bytes).
    /// The span is only as safe as the fences: see <see cref="IMergeBackend.UploadAsync"/> and <see cref="IMergeBackend.DownloadAsync"/>.
    /// </summary>
    public Span<T> Span<T>(long elementOffset, int length) where T : unmanaged
    {
        if (elementOffset < 0 || length < 0 || elementOffset > ByteLength / sizeof(T) - length)
            throw new ArgumentOutOfRangeException(nameof(elementOffset), $"[{elementOffset}, {elementOffset + length}) of {typeof(T).Name} outside a host buffer of {ByteLength} bytes");
        return new Span<T>((T*)Pointer + elementOffset, length);
    }

    /// <summary>Waits for the transfers still queued on the buffer, then unlocks and frees it.</summary>
    public void Dispose()
    {
        var p = _ptr;
        if (p == null) return;
        // A queued copy may still read or write this memory: the device must be done with it first.
        Owner.Wait(Pending);
        _ptr = null;
        if (_pooled) BufferPool.Return(p, ByteLength);
        else
        {
            _pageLock?.Dispose();
            _pageLock = null;
            NativeMemory.AlignedFree(p);
        }
        if (_capacity > 0) GC.RemoveMemoryPressure(_capacity);
    }
}
