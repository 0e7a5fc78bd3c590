using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Kernels;

/// <summary>
/// Memory owned by a backend (host memory for the CPU backend, device memory for ILGPU backends),
/// measured in bytes. Views into it name an element offset and an element type (<see cref="DType"/>: F32, BF16 or F16).
/// </summary>
public abstract class KernelBuffer : IDisposable
{
    /// <summary>Size in bytes.</summary>
    public abstract long ByteLength { get; }

    /// <summary>The backend that owns the buffer.</summary>
    public abstract IMergeBackend Owner { get; }

    /// <summary>Number of F32 elements the buffer holds.</summary>
    public long FloatLength => ByteLength / sizeof(float);

    /// <inheritdoc/>
    public abstract void Dispose();
}

/// <summary>A contiguous run of F32 elements of one tensor inside a buffer.</summary>
/// <param name="Offset">First element (F32 index into the buffer).</param>
/// <param name="Length">Number of elements.</param>
public readonly record struct TensorRange(long Offset, long Length);
