using CopaKernels.Kernels;

namespace CopaKernels.Merge.Routes;

/// <summary>
/// Host-side helpers to move a module's tensors through a device backend: pack many host arrays into one
/// buffer (so a batched kernel sees them all), and read them back.
/// </summary>
/// <remarks>
/// The tensors go through one host staging buffer, so each direction is one queued transfer and one wait
/// instead of a synchronous round trip per tensor (2N per module with N adapters; a wait costs a driver call
/// and, on a GPU, an idle stream). The staging is not page-locked: it lives for one module, and locking
/// costs more than it saves at that size. It holds one more copy of the inputs (MergePlanner counts it).
/// </remarks>
internal sealed class PackedTensors : IDisposable
{
    private readonly IMergeBackend _backend;
    private readonly HostBuffer _staging;
    private readonly long _bytes;

    public PackedTensors(IMergeBackend backend, IReadOnlyList<float[]> tensors)
    {
        _backend = backend;
        Ranges = new TensorRange[tensors.Count];
        long off = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            Ranges[i] = new TensorRange(off, tensors[i].Length);
            off += tensors[i].Length;
        }
        _bytes = off * sizeof(float);
        Buffer = backend.Allocate(Math.Max(1, off) * sizeof(float));
        try
        {
            _staging = backend.AllocateHost(_bytes, pageLocked: false);
            for (int i = 0; i < tensors.Count; i++)
                tensors[i].AsSpan().CopyTo(_staging.Span<float>(Ranges[i].Offset, tensors[i].Length));
            // The kernels queued next see the bytes in order; the staging is only reused by ReadBack, after a wait.
            backend.UploadAsync(_staging, 0, Buffer, 0, _bytes);
        }
        catch
        {
            _staging?.Dispose();
            Buffer.Dispose();
            throw;
        }
    }

    public KernelBuffer Buffer { get; }

    public TensorRange[] Ranges { get; }

    /// <summary>Every tensor as the kernels left it, in order: one download after all queued work.</summary>
    public float[][] ReadBack()
    {
        _backend.Wait(_backend.DownloadAsync(Buffer, 0, _staging, 0, _bytes));
        var result = new float[Ranges.Length][];
        for (int i = 0; i < Ranges.Length; i++)
        {
            result[i] = GC.AllocateUninitializedArray<float>(checked((int)Ranges[i].Length));
            _staging.Span<float>(Ranges[i].Offset, result[i].Length).CopyTo(result[i]);
        }
        return result;
    }

    public void Dispose()
    {
        _staging.Dispose();
        Buffer.Dispose();
    }
}
