using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// Writes output bytes on a dedicated thread, in order, so disk writes overlap the reads and products
/// of the next tile. At most <see cref="Depth"/> buffers wait at a time (part of the memory plan); the
/// producer blocks when the disk is the bottleneck. Buffers come from <see cref="ArrayPool{T}.Shared"/>
/// and go back to it once written, or are a product tile's host buffer (<see cref="TileStaging"/>), handed
/// back through its release callback. A write failure is rethrown to the producer at its next call.
/// </summary>
internal sealed class WriteQueue : IDisposable
{
    /// <summary>Buffers that may wait to be written.</summary>
    public const int Depth = 2;

    private readonly BlockingCollection<Item> _items = new(Depth);
    private readonly Func<string, SafetensorsWriter> _writerFor;
    private readonly Thread _thread;
    private readonly MergeTimeline? _timeline;
    private ExceptionDispatchInfo? _failure;

    /// <param name="writerFor">The file that takes tensor data next (may open a new shard; called on the writer thread only).</param>
    /// <param name="timeline">Counts the bytes queued and written, or null.</param>
    public WriteQueue(Func<string, SafetensorsWriter> writerFor, MergeTimeline? timeline = null)
    {
        _writerFor = writerFor;
        _timeline = timeline;
        _thread = new Thread(Drain) { IsBackground = true, Name = "copa-writer" };
        _thread.Start();
    }

    /// <summary>Queues <paramref name="length"/> bytes of a pooled <paramref name="buffer"/>, which the queue now owns.</summary>
    public void Append(string tensor, byte[] buffer, int length) => Add(new Item(tensor, buffer, null, length, null));

    /// <summary>
    /// Queues <paramref name="length"/> bytes of a host buffer whose transfers are complete; the writer thread
    /// calls <paramref name="release"/> with it once they are written (or dropped after a failure). When this
    /// throws, the buffer was not queued and is still the caller's.
    /// </summary>
    public void Append(string tensor, HostBuffer buffer, int length, Action<HostBuffer> release) =>
        Add(new Item(tensor, null, buffer, length, release));

    private void Add(Item item)
    {
        _failure?.Throw();
        _timeline?.Computed(item.Length);
        try { _items.Add(item); }
        catch (InvalidOperationException) { _failure?.Throw(); throw; }
    }

    /// <summary>Rents a buffer for <see cref="Append(string, byte[], int)"/>.</summary>
    public static byte[] Rent(long bytes) => ArrayPool<byte>.Shared.Rent(checked((int)Math.Max(1, bytes)));

    /// <summary>Waits until everything queued is written; rethrows a write failure.</summary>
    public void Complete()
    {
        _items.CompleteAdding();
        _thread.Join();
        _failure?.Throw();
    }

    private void Drain()
    {
        foreach (var item in _items.GetConsumingEnumerable())
        {
            try
            {
                if (_failure == null)
                {
                    long start = System.Diagnostics.Stopwatch.GetTimestamp();
                    _writerFor(item.Tensor).Append(item.Tensor, item.Array != null ? item.Array.AsSpan(0, item.Length) : item.Host!.Span<byte>(0, item.Length));
                    _timeline?.Written(item.Length, System.Diagnostics.Stopwatch.GetTimestamp() - start);
                }
            }
            catch (Exception e)
            {
                _failure = ExceptionDispatchInfo.Capture(e);
                _items.CompleteAdding();
            }
            finally
            {
                if (item.Array != null) ArrayPool<byte>.Shared.Return(item.Array);
                else item.Release!(item.Host!);
            }
        }
    }

    /// <summary>Bytes to write: a pooled array, or a host buffer with the callback that takes it back.</summary>
    private sealed record Item(string Tensor, byte[]? Array, HostBuffer? Host, int Length, Action<HostBuffer>? Release);

    /// <summary>Stops the writer (after a failure or cancellation of the producer) without writing what is left.</summary>
    public void Dispose()
    {
        if (!_items.IsAddingCompleted)
        {
            _failure ??= ExceptionDispatchInfo.Capture(new OperationCanceledException("write queue abandoned"));
            _items.CompleteAdding();
        }
        _thread.Join();
        _items.Dispose();
    }
}
