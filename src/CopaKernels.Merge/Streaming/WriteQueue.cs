using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// Writes output bytes on a dedicated thread, in order, so disk writes overlap the reads and products
/// of the next tile. At most <see cref="Depth"/> buffers wait at a time (part of the memory plan); the
/// producer blocks when the disk is the bottleneck. Buffers come from <see cref="ArrayPool{T}.Shared"/>
/// and go back to it once written. A write failure is rethrown to the producer at its next call.
/// </summary>
internal sealed class WriteQueue : IDisposable
{
    /// <summary>Buffers that may wait to be written.</summary>
    public const int Depth = 2;

    private readonly BlockingCollection<(string Tensor, byte[] Buffer, int Length)> _items = new(Depth);
    private readonly Func<string, SafetensorsWriter> _writerFor;
    private readonly Thread _thread;
    private ExceptionDispatchInfo? _failure;

    /// <param name="writerFor">The file that takes tensor data next (may open a new shard; called on the writer thread only).</param>
    public WriteQueue(Func<string, SafetensorsWriter> writerFor)
    {
        _writerFor = writerFor;
        _thread = new Thread(Drain) { IsBackground = true, Name = "copa-writer" };
        _thread.Start();
    }

    /// <summary>Queues <paramref name="length"/> bytes of a pooled <paramref name="buffer"/>, which the queue now owns.</summary>
    public void Append(string tensor, byte[] buffer, int length)
    {
        _failure?.Throw();
        try { _items.Add((tensor, buffer, length)); }
        catch (InvalidOperationException) { _failure?.Throw(); throw; }
    }

    /// <summary>Rents a buffer for <see cref="Append"/>.</summary>
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
        foreach (var (tensor, buffer, length) in _items.GetConsumingEnumerable())
        {
            try
            {
                if (_failure == null) _writerFor(tensor).Append(tensor, buffer.AsSpan(0, length));
            }
            catch (Exception e)
            {
                _failure = ExceptionDispatchInfo.Capture(e);
                _items.CompleteAdding();
            }
            finally { ArrayPool<byte>.Shared.Return(buffer); }
        }
    }

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
