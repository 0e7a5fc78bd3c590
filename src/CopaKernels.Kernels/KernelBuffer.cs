namespace CopaKernels.Kernels;

/// <summary>
/// Memory owned by a backend (host memory for the CPU backend, device memory for ILGPU backends),
/// measured in bytes. Views into it name an element offset and a <see cref="StorageType"/>.
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

/// <summary>Element types the kernels read and write.</summary>
public enum StorageType
{
    /// <summary>IEEE single precision (the compute type).</summary>
    F32,
    /// <summary>bfloat16 bits (ushort).</summary>
    BF16,
    /// <summary>IEEE half bits (ushort).</summary>
    F16,
}

/// <summary>Facts about <see cref="StorageType"/>.</summary>
public static class StorageTypes
{
    /// <summary>Bytes per element.</summary>
    public static int Size(this StorageType t) => t == StorageType.F32 ? 4 : 2;

    /// <summary>The safetensors dtype that stores the same bits.</summary>
    public static Formats.Safetensors.DType ToDType(this StorageType t) => t switch
    {
        StorageType.BF16 => Formats.Safetensors.DType.BF16,
        StorageType.F16 => Formats.Safetensors.DType.F16,
        _ => Formats.Safetensors.DType.F32,
    };

    /// <summary>The storage type of a merge dtype (F32, BF16, F16).</summary>
    public static StorageType FromDType(Formats.Safetensors.DType d) => d switch
    {
        Formats.Safetensors.DType.F32 => StorageType.F32,
        Formats.Safetensors.DType.BF16 => StorageType.BF16,
        Formats.Safetensors.DType.F16 => StorageType.F16,
        _ => throw new ArgumentOutOfRangeException(nameof(d), d, "not a merge dtype"),
    };
}

/// <summary>A contiguous run of F32 elements of one tensor inside a buffer.</summary>
/// <param name="Offset">First element (F32 index into the buffer).</param>
/// <param name="Length">Number of elements.</param>
public readonly record struct TensorRange(long Offset, long Length);
