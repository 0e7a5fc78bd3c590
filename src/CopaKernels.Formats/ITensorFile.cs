namespace CopaKernels.Formats;

using CopaKernels.Formats.Safetensors;

/// <summary>
/// A file of named tensors opened read-only, whatever its container (safetensors, a PyTorch zip
/// checkpoint): the table of tensors is read up front; their bytes only when asked for, with
/// positioned reads, so holding a file open costs no more than its table. A tensor's
/// <see cref="TensorInfo.Begin"/> and <see cref="TensorInfo.End"/> are positions in the container's
/// own terms; only the file that gave them reads with them.
/// </summary>
public interface ITensorFile : IDisposable
{
    /// <summary>The path the file was opened with.</summary>
    string Path { get; }

    /// <summary>File size in bytes.</summary>
    long FileLength { get; }

    /// <summary>The file's identity when it was opened.</summary>
    FileIdentity Identity { get; }

    /// <summary>The tensors, in the container's order.</summary>
    IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>Looks a tensor up by name.</summary>
    bool TryGet(string name, out TensorInfo info);

    /// <summary>
    /// Bytes read from the file so far, by every thread (the merge report's throughput over time). Counted
    /// where the reads happen, so it includes the reads of every helper (<see cref="ReadSingles(TensorInfo)"/>, <see cref="CopyTo"/>).
    /// </summary>
    long BytesRead { get; }

    /// <summary>Time spent in reads from the file so far, summed over the threads that read.</summary>
    TimeSpan ReadTime { get; }

    /// <summary>Reads raw bytes (little-endian, row-major, contiguous) of a tensor, starting <paramref name="byteOffset"/> bytes into it.</summary>
    void ReadBytes(TensorInfo tensor, long byteOffset, Span<byte> destination);

    /// <summary>Reads <paramref name="destination"/>.Length elements of a float tensor from element <paramref name="elementOffset"/>, as F32.</summary>
    void ReadSingles(TensorInfo tensor, long elementOffset, Span<float> destination);

    /// <summary>Reads a whole float tensor as F32 (for tensors known to be small).</summary>
    float[] ReadSingles(TensorInfo tensor);

    /// <summary>Copies a tensor's bytes to a stream in bounded chunks.</summary>
    void CopyTo(TensorInfo tensor, Stream destination);

    /// <summary>
    /// Throws when the open file has been written to since it was opened, or its path now names another
    /// file: what was read from it may mix two versions. Called before an output made from it is committed.
    /// </summary>
    void CheckUnchanged();
}
