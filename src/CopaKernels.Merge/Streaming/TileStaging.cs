using System.Collections.Concurrent;
using CopaKernels.Kernels;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// The host side of the product tiles of one merge: two base-tile buffers (one uploading while the next is
/// read from disk) and a ring of <see cref="OutputSlots"/> result buffers that go from the device's download
/// straight to the write queue and come back once written, so no tile is copied on the host. All are the
/// backend's page-locked host buffers (<see cref="IMergeBackend.AllocateHost"/>), allocated on first use,
/// kept for the whole merge (page-locking is a driver call per allocation) and grown when a wider tile comes.
/// </summary>
/// <remarks>
/// Disposed after the write queue has drained (its thread may still be writing from a result buffer until
/// then); disposing a buffer also waits for the transfers still queued on it.
/// </remarks>
internal sealed class TileStaging(IMergeBackend backend) : IDisposable
{
    /// <summary>
    /// Result buffers: one the device is downloading into, one waiting to be queued while the device works,
    /// and two for the write queue (one being written, one waiting): the host output buffers that
    /// <see cref="MergePlan.TileBytesPerElement"/> counts.
    /// </summary>
    public const int OutputSlots = 4;

    /// <summary>Sizes are rounded up to this, so that tiles of slightly different shapes share the buffers.</summary>
    private const long Granularity = 64L << 10;

    private readonly HostBuffer?[] _inputs = new HostBuffer?[2];
    private readonly List<HostBuffer> _outputs = [];
    private readonly BlockingCollection<HostBuffer> _free = new();
    private KernelBuffer? _flag;
    private HostBuffer? _flags;
    private bool _disposed;

    /// <summary>
    /// The product's non-finite flag (<see cref="ProductTile.NonFiniteFlag"/>) on the backend, and its host
    /// side: word 0 stays zero (uploaded to clear the flag before each tile), words 1 and 2 take the flag
    /// of alternate tiles. Allocated once for the merge, like the tile buffers.
    /// </summary>
    public (KernelBuffer Device, HostBuffer Host) Flags()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_flag == null)
        {
            _flags = backend.AllocateHost(12, pageLocked: false);
            _flags.Span<uint>(0, 3).Clear();
            _flag = backend.Allocate(4);
        }
        return (_flag, _flags!);
    }

    /// <summary>Two host buffers of at least <paramref name="bytes"/> each for base tiles.</summary>
    public HostBuffer[] Inputs(long bytes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        for (int i = 0; i < 2; i++)
        {
            if (_inputs[i] is { } b && b.ByteLength >= bytes) continue;
            _inputs[i]?.Dispose();
            _inputs[i] = null;
            _inputs[i] = backend.AllocateHost(RoundUp(bytes));
        }
        return [_inputs[0]!, _inputs[1]!];
    }

    /// <summary>
    /// Makes every result buffer hold at least <paramref name="bytes"/>. Growing takes all of them back first
    /// (waiting for the write queue to finish with those it holds); call it while holding none.
    /// </summary>
    public void EnsureOutput(long bytes, CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_outputs.Count == OutputSlots && _outputs[0].ByteLength >= bytes) return;
        for (int i = 0; i < _outputs.Count; i++) _free.Take(ct);
        foreach (var b in _outputs) b.Dispose();
        _outputs.Clear();
        for (int i = 0; i < OutputSlots; i++)
        {
            var b = backend.AllocateHost(RoundUp(bytes));
            _outputs.Add(b);
            _free.Add(b);
        }
    }

    /// <summary>A free result buffer; blocks while all are downloading or queued (the disk is the bottleneck).</summary>
    public HostBuffer TakeOutput(CancellationToken ct) => _free.Take(ct);

    /// <summary>Gives a result buffer back (the write queue calls this from its thread once the bytes are written).</summary>
    public void ReturnOutput(HostBuffer buffer) => _free.Add(buffer);

    /// <summary>Result buffers not held by the producer or the write queue (all of them between weights).</summary>
    internal int FreeOutputs => _free.Count;

    private static long RoundUp(long bytes) => Math.Max(Granularity, (bytes + Granularity - 1) / Granularity * Granularity);

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var b in _inputs) b?.Dispose();
        foreach (var b in _outputs) b.Dispose();
        _flags?.Dispose();
        _flag?.Dispose();
        _free.Dispose();
    }
}
