using CopaKernels.Kernels;
using ILGPU;
using ILGPU.Runtime;

namespace CopaKernels.Gpu;

/// <summary>
/// Device memory of an <see cref="IlgpuBackend"/>, zero-filled on allocation. It is stored as 32-bit words
/// (the byte length rounded up) so that the F32 and 16-bit views the kernels take are always aligned.
/// </summary>
public sealed class IlgpuBuffer : KernelBuffer
{
    private readonly IlgpuBackend _owner;
    private MemoryBuffer1D<int, Stride1D.Dense>? _memory;

    internal IlgpuBuffer(IlgpuBackend owner, long byteLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(byteLength);
        _owner = owner;
        ByteLength = byteLength;
        // At least one word: ILGPU rejects empty allocations on some accelerators.
        _memory = owner.Accelerator.Allocate1D<int>(Math.Max(1, (byteLength + 3) / 4));
        _memory.View.MemSetToZero(owner.Stream);
    }

    /// <inheritdoc/>
    public override long ByteLength { get; }

    /// <inheritdoc/>
    public override IMergeBackend Owner => _owner;

    private ArrayView<int> Words => (_memory ?? throw new ObjectDisposedException(nameof(IlgpuBuffer))).View;

    /// <summary>The whole buffer as F32 elements.</summary>
    internal ArrayView<float> Floats => Words.Cast<float>();

    /// <summary>The whole buffer as 16-bit elements (BF16 or F16 bits).</summary>
    internal ArrayView<ushort> Halves => Words.Cast<ushort>();

    /// <summary>Bytes [offset, offset + length).</summary>
    internal ArrayView<byte> Bytes(long offset, long length) => Words.Cast<byte>().SubView(offset, length);

    /// <inheritdoc/>
    public override void Dispose()
    {
        _memory?.Dispose();
        _memory = null;
    }
}
