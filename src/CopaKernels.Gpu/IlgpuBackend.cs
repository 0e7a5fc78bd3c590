using CopaKernels.Kernels;
using ILGPU;
using ILGPU.Runtime;

namespace CopaKernels.Gpu;

/// <summary>
/// The merge kernels as hand-written ILGPU kernels on one device (CUDA, OpenCL, or ILGPU's CPU emulator for
/// tests). The backend owns its ILGPU context, accelerator and stream; every kernel is compiled once, when
/// the backend is created, and kept as a launch delegate. Work is queued on the one stream in order;
/// <see cref="Download"/> and the selections (which read their results back) wait for it. Like the stream
/// it wraps, a backend serves one caller at a time.
/// </summary>
/// <remarks>
/// <para>Queued transfers (<see cref="UploadAsync"/>, <see cref="DownloadAsync"/>) go on the same stream with
/// ILGPU's <c>CopyFromCPUUnsafeAsync</c>/<c>CopyToCPUUnsafeAsync</c>, which enqueue without synchronising
/// (cuMemcpyAsync on CUDA, a non-blocking clEnqueueWrite/ReadBuffer on OpenCL, a plain memcpy on the CPU
/// emulator, whose kernels run on the calling thread). ILGPU's <c>CopyFromPageLockedAsync</c> is not used: on
/// an accelerator that cannot page-lock (OpenCL, CPU) it synchronises the stream after every copy. Host
/// buffers are page-locked with <c>Accelerator.CreatePageLockFromPinned</c> (what ILGPU's page-locked arrays
/// use): cuMemHostRegister on CUDA, a NullPageLockScope (no lock) on OpenCL and the CPU emulator.</para>
/// <para>One stream only: ILGPU 1.5.3 has no way to make one stream wait for another (no cross-stream event;
/// its only event, the profiling marker, needs a profiling context, is waited on by the host, and on OpenCL
/// is waited for as soon as it is added: CLStream.AddProfilingMarkerInternal synchronises it), so a copy
/// stream beside the compute stream could only be ordered by the host waiting in between, which serialises
/// what it was meant to overlap. On one in-order stream, copies and kernels do not overlap each other on the
/// device; what overlaps is the host's own work (disk reads, the write queue) with the queued device work.
/// For the same reason a second device tile buys nothing: the stream never runs the next tile's upload before
/// the current tile's kernel is done. Fences count queued transfers; waiting on one not yet known complete
/// synchronises the stream, which completes every fence queued so far.</para>
/// </remarks>
public sealed class IlgpuBackend : IMergeBackend
{
    private readonly Context _context;
    private readonly MagnitudeSelection _selection;
    private readonly RowAbsSums _rowSums;
    private readonly LowRankProduct _product;
    private long _queued, _completed;
    private bool _disposed;

    internal IlgpuBackend(Context context, Device device, BackendKind kind, string id)
    {
        _context = context;
        Kind = kind;
        Id = id;
        try
        {
            Accelerator = device.CreateAccelerator(context);
            Stream = Accelerator.CreateStream();
            // Group sizes come from the thread limit only: PoCL reports a warp size of 0.
            int limit = Math.Min(MagnitudeSelection.MaxGroupSize, Math.Max(1, Accelerator.MaxNumThreadsPerGroup));
            ReductionGroupSize = 1 << (31 - System.Numerics.BitOperations.LeadingZeroCount((uint)limit));
            SelectionGroupSize = ReductionGroupSize;
            TileThreads = 1;
            while ((TileThreads * 2) * (TileThreads * 2) <= ReductionGroupSize && TileThreads < 16) TileThreads *= 2;
            MaxResidentGroups = Math.Max(1, Accelerator.NumMultiprocessors) * 8;
            Name = $"{id}: {device.Name}, {CopaKernels.Formats.MemorySize.Format(device.MemorySize)}";
            _selection = new MagnitudeSelection(this);
            _rowSums = new RowAbsSums(this);
            _product = new LowRankProduct(this);
        }
        catch
        {
            Stream?.Dispose();
            Accelerator?.Dispose();
            context.Dispose();
            throw;
        }
    }

    /// <inheritdoc/>
    public BackendKind Kind { get; }

    /// <summary>The device id: cuda:N, opencl:N or ilgpu-cpu.</summary>
    public string Id { get; }

    /// <inheritdoc/>
    public string Name { get; }

    internal Accelerator Accelerator { get; }

    internal AcceleratorStream Stream { get; }

    /// <summary>Threads per group of the reductions (a power of two, at most 256).</summary>
    internal int ReductionGroupSize { get; }

    /// <summary>Threads per group of the selection kernels.</summary>
    internal int SelectionGroupSize { get; }

    /// <summary>Threads per side of a GEMM group (T × T threads, 4T × 4T output tile).</summary>
    internal int TileThreads { get; }

    /// <summary>Groups a grid-stride kernel launches to fill the device.</summary>
    internal int MaxResidentGroups { get; }

    /// <inheritdoc/>
    public KernelBuffer Allocate(long byteLength) => new IlgpuBuffer(this, byteLength);

    /// <inheritdoc/>
    public void Upload(ReadOnlySpan<byte> source, KernelBuffer destination, long byteOffset)
    {
        BackendChecks.Transfer(this, destination, byteOffset, source.Length);
        if (source.Length == 0) return;
        Own(destination).Bytes(byteOffset, source.Length).CopyFromCPU(Stream, source);
        // The source span may be gone when this returns: never leave the copy queued.
        Synchronize();
    }

    /// <inheritdoc/>
    public void Download(KernelBuffer source, long byteOffset, Span<byte> destination)
    {
        BackendChecks.Transfer(this, source, byteOffset, destination.Length);
        if (destination.Length == 0) return;
        Own(source).Bytes(byteOffset, destination.Length).CopyToCPU(Stream, destination);
        Synchronize();
    }

    /// <inheritdoc/>
    public void Synchronize()
    {
        Stream.Synchronize();
        _completed = _queued;
    }

    /// <inheritdoc/>
    /// <remarks>Page-locked on CUDA when the device can map host memory; plain native memory on OpenCL and the CPU emulator.</remarks>
    public HostBuffer AllocateHost(long byteLength, bool pageLocked = true) => new(this, byteLength, pageLocked ? PageLock : null);

    /// <inheritdoc/>
    public unsafe TransferFence UploadAsync(HostBuffer source, long sourceByteOffset, KernelBuffer destination, long destinationByteOffset, long byteLength)
    {
        BackendChecks.HostTransfer(this, source, sourceByteOffset, destination, destinationByteOffset, byteLength);
        if (byteLength == 0) return default;
        Own(destination).Bytes(destinationByteOffset, byteLength).CopyFromCPUUnsafeAsync(Stream, ref *(source.Pointer + sourceByteOffset), byteLength);
        return source.Pending = Queued();
    }

    /// <inheritdoc/>
    public unsafe TransferFence DownloadAsync(KernelBuffer source, long sourceByteOffset, HostBuffer destination, long destinationByteOffset, long byteLength)
    {
        BackendChecks.HostTransfer(this, destination, destinationByteOffset, source, sourceByteOffset, byteLength);
        if (byteLength == 0) return default;
        Own(source).Bytes(sourceByteOffset, byteLength).CopyToCPUUnsafeAsync(Stream, ref *(destination.Pointer + destinationByteOffset), byteLength);
        return destination.Pending = Queued();
    }

    /// <inheritdoc/>
    public void Wait(TransferFence fence)
    {
        BackendChecks.Fence(this, fence);
        // After Dispose the stream was synchronised and is gone: every fence is complete.
        if (fence.Sequence <= _completed || _disposed) return;
        Synchronize();
    }

    private TransferFence Queued() => new(this, ++_queued);

    /// <summary>
    /// ILGPU's page lock for a host block, or null where the accelerator cannot lock: ILGPU 1.5.3 returns a
    /// real lock (CudaPageLockScope, cuMemHostRegister) only on a CUDA device that can map host memory, and an
    /// internal no-op scope everywhere else.
    /// </summary>
    private IDisposable? PageLock(nint pointer, long bytes)
    {
        var scope = Accelerator.CreatePageLockFromPinned<byte>(pointer, bytes);
        if (scope is CudaPageLockScope<byte>) return scope;
        scope.Dispose();
        return null;
    }

    /// <inheritdoc/>
    public SelectionResult SelectByMagnitude(KernelBuffer x, TensorRange range, double density, bool applyMask = true)
    {
        BackendChecks.Selection(this, x, range, density);
        return _selection.Select(Own(x), range, density, applyMask);
    }

    /// <inheritdoc/>
    public void SelectByMagnitudeBatched(KernelBuffer x, ReadOnlySpan<TensorRange> ranges, double density, Span<SelectionResult> results, bool applyMask = true)
    {
        BackendChecks.Batched(this, x, ranges, density, results.Length);
        _selection.SelectBatched(Own(x), ranges, density, results, applyMask);
    }

    /// <inheritdoc/>
    public void RowAbsSums(MatrixView x, BufferView sums, RowThreshold? threshold = null)
    {
        BackendChecks.RowAbsSums(this, x, sums, threshold);
        var t = threshold.GetValueOrDefault();
        var masked = t.MaskedSums;
        _rowSums.Run(Own(x.Buffer), x.Offset, x.Rows, x.Cols, Own(sums.Buffer), sums.Offset, t.Value,
            masked is { } m ? Own(m.Buffer) : null, masked?.Offset ?? 0, t.ZeroBelow);
    }

    /// <inheritdoc/>
    public void LowRankProduct(ReadOnlySpan<LowRankTerm> terms, long dOut, long dIn, in ProductTile tile)
    {
        BackendChecks.LowRankProduct(this, terms, dOut, dIn, tile);
        _product.Run(terms, dOut, dIn, tile);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_disposed) return;
        Synchronize();
        _disposed = true;
        _selection.Dispose();
        _product.Dispose();
        Stream.Dispose();
        Accelerator.Dispose();
        _context.Dispose();
    }

    private IlgpuBuffer Own(KernelBuffer buffer)
    {
        BackendChecks.Own(this, buffer);
        return (IlgpuBuffer)buffer;
    }
}
