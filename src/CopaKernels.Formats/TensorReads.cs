using System.Buffers;
using System.Runtime.InteropServices;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Formats;

/// <summary>
/// The reads every <see cref="ITensorFile"/> builds on its own positioned <see cref="ITensorFile.ReadBytes"/>:
/// one way to check a byte range, to widen a float tensor to F32 in bounded chunks, and to copy one out.
/// </summary>
internal static class TensorReads
{
    /// <summary>Elements decoded per chunk: the scratch stays in cache whatever the tensor's size.</summary>
    private const int DecodeChunk = 1 << 16;

    /// <summary>Bytes per read of a copy.</summary>
    private const int CopyChunk = 4 << 20;

    /// <summary>Throws unless [<paramref name="byteOffset"/>, + <paramref name="length"/>) lies inside the tensor.</summary>
    public static void CheckRange(TensorInfo tensor, long byteOffset, int length)
    {
        if (byteOffset < 0 || byteOffset + length > tensor.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(byteOffset), $"{tensor.Name}: range [{byteOffset}, {byteOffset + length}) outside {tensor.ByteLength} bytes");
    }

    /// <summary>
    /// <paramref name="destination"/>.Length elements from <paramref name="elementOffset"/>, as F32: F32 read in
    /// place, other float types decoded chunk by chunk; <paramref name="notFloat"/> is the file's own error for
    /// a tensor that is not a float type.
    /// </summary>
    public static void ReadSingles(ITensorFile file, TensorInfo tensor, long elementOffset, Span<float> destination, Func<string, Exception> notFloat)
    {
        if (tensor.DType == DType.F32)
        {
            file.ReadBytes(tensor, elementOffset * 4, MemoryMarshal.AsBytes(destination));
            return;
        }
        if (!ElementCodec.CanDecode(tensor.DType))
            throw notFloat($"dtype {tensor.DType} is not a float type (F32, F16, BF16, F64)");
        int size = tensor.DType.Bits() / 8;
        var scratch = ArrayPool<byte>.Shared.Rent(DecodeChunk * size);
        try
        {
            for (int done = 0; done < destination.Length; done += DecodeChunk)
            {
                int m = Math.Min(DecodeChunk, destination.Length - done);
                var bytes = scratch.AsSpan(0, m * size);
                file.ReadBytes(tensor, (elementOffset + done) * size, bytes);
                ElementCodec.Decode(tensor.DType, bytes, destination.Slice(done, m));
            }
        }
        finally { ArrayPool<byte>.Shared.Return(scratch); }
    }

    /// <summary>A whole float tensor as F32 (for tensors known to be small).</summary>
    public static float[] ReadSingles(ITensorFile file, TensorInfo tensor)
    {
        var a = GC.AllocateUninitializedArray<float>(checked((int)tensor.ElementCount));
        file.ReadSingles(tensor, 0, a);
        return a;
    }

    /// <summary>A tensor's bytes copied to <paramref name="destination"/> in bounded chunks.</summary>
    public static void CopyTo(ITensorFile file, TensorInfo tensor, Stream destination)
    {
        var buffer = ArrayPool<byte>.Shared.Rent((int)Math.Clamp(tensor.ByteLength, 1, CopyChunk));
        try
        {
            for (long done = 0; done < tensor.ByteLength;)
            {
                int m = (int)Math.Min(buffer.Length, tensor.ByteLength - done);
                file.ReadBytes(tensor, done, buffer.AsSpan(0, m));
                destination.Write(buffer, 0, m);
                done += m;
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }
}

/// <summary>
/// An <see cref="ITensorFile"/>'s <see cref="ITensorFile.BytesRead"/> and <see cref="ITensorFile.ReadTime"/>:
/// counted where its <see cref="ITensorFile.ReadBytes"/> reads, by every thread that reads.
/// </summary>
internal sealed class ReadCounters
{
    private long _bytes, _ticks;

    public long Bytes => Interlocked.Read(ref _bytes);

    public TimeSpan Time => System.Diagnostics.Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _ticks));

    /// <summary>Counts a read of <paramref name="bytes"/> that began at <paramref name="startTimestamp"/> (<see cref="System.Diagnostics.Stopwatch.GetTimestamp"/>) and has just ended.</summary>
    public void Add(int bytes, long startTimestamp)
    {
        Interlocked.Add(ref _bytes, bytes);
        Interlocked.Add(ref _ticks, System.Diagnostics.Stopwatch.GetTimestamp() - startTimestamp);
    }
}
