using System.Runtime.InteropServices;
using CopaKernels.Kernels;

namespace CopaKernels.Merge;

/// <summary>
/// Host-side helpers to move a module's tensors through a backend: pack many host arrays into one
/// buffer (so a batched kernel sees them all), and read them back.
/// </summary>
internal sealed class PackedTensors : IDisposable
{
    private readonly IMergeBackend _backend;

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
        Buffer = backend.Allocate(Math.Max(1, off) * sizeof(float));
        for (int i = 0; i < tensors.Count; i++)
            backend.Upload(MemoryMarshal.AsBytes(tensors[i].AsSpan()), Buffer, Ranges[i].Offset * sizeof(float));
    }

    public KernelBuffer Buffer { get; }

    public TensorRange[] Ranges { get; }

    public float[] Download(int i)
    {
        var r = GC.AllocateUninitializedArray<float>(checked((int)Ranges[i].Length));
        _backend.Download(Buffer, Ranges[i].Offset * sizeof(float), MemoryMarshal.AsBytes(r.AsSpan()));
        return r;
    }

    public void Dispose() => Buffer.Dispose();
}
