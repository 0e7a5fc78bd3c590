using Microsoft.Win32.SafeHandles;
using K = CopaKernels.Formats.Safetensors.SafetensorsErrorKind;

namespace CopaKernels.Formats.Safetensors;

/// <summary>
/// A safetensors file opened read-only. Only the header is read up front; tensor data is read on
/// demand with positioned reads (thread-safe, any offset, files and tensors above 2 GiB), so reading
/// one tensor never loads the file and the process's resident memory stays what the caller asks for.
/// </summary>
public sealed class SafetensorsFile : ITensorFile
{
    private readonly SafeFileHandle _handle;

    private SafetensorsFile(string path, SafeFileHandle handle, FileIdentity identity, long length, long dataStart, SafetensorsHeader header)
    {
        Path = path;
        _handle = handle;
        Identity = identity;
        FileLength = length;
        DataStart = dataStart;
        Header = header;
    }

    /// <summary>The path the file was opened with.</summary>
    public string Path { get; }

    /// <summary>The file's identity when it was opened (see <see cref="CheckUnchanged"/>).</summary>
    public FileIdentity Identity { get; }

    /// <summary>File size in bytes.</summary>
    public long FileLength { get; }

    /// <summary>Absolute file offset of the data section.</summary>
    public long DataStart { get; }

    /// <summary>The validated header.</summary>
    public SafetensorsHeader Header { get; }

    /// <summary>Tensors in data order.</summary>
    public IReadOnlyList<TensorInfo> Tensors => Header.Tensors;

    /// <summary>The <c>__metadata__</c> strings.</summary>
    public IReadOnlyDictionary<string, string> Metadata => Header.Metadata;

    /// <summary>Opens and validates a file. Throws <see cref="SafetensorsException"/> on any format error.</summary>
    public static SafetensorsFile Open(string path)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors I/O needs a little-endian machine");
        SafeFileHandle handle;
        try { handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new SafetensorsException(K.Io, path, null, Describe(e), e);
        }
        try
        {
            var identity = FileIdentity.Of(handle);
            long length = RandomAccess.GetLength(handle);
            Span<byte> prefix = stackalloc byte[SafetensorsHeader.PrefixSize];
            int got = length >= prefix.Length ? ReadFully(handle, prefix, 0, path) : 0;
            long n = SafetensorsHeader.CheckPrefix(prefix[..got], length, path);
            // n is bounded by MaxHeaderSize and by the file length, so this allocation is honest.
            var header = new byte[n];
            ReadFully(handle, header, SafetensorsHeader.PrefixSize, path);
            long dataStart = SafetensorsHeader.PrefixSize + n;
            var parsed = SafetensorsHeader.Parse(header, length - dataStart, path);
            return new SafetensorsFile(path, handle, identity, length, dataStart, parsed);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Throws <see cref="SafetensorsErrorKind.ChangedWhileRead"/> when the open file has been written to
    /// since it was opened, or its path now names another file (or none): what was read from it may mix
    /// two versions. Called before an output made from it is committed.
    /// </summary>
    public void CheckUnchanged()
    {
        // The path first: a file replaced by a rename also changes the old one's ctime (its link count).
        if ((FileIdentity.ChangeAt(Path, Identity) ?? FileIdentity.Of(_handle).ChangeSince(Identity)) is { } change)
            throw new SafetensorsException(K.ChangedWhileRead, Path, null, FileIdentity.ChangedReason(change));
    }

    /// <summary>Looks a tensor up by name, or throws <see cref="SafetensorsErrorKind.TensorNotFound"/>.</summary>
    public TensorInfo Get(string name) =>
        Header.TryGet(name, out var t) ? t : throw new SafetensorsException(K.TensorNotFound, Path, name, "tensor not found");

    /// <summary>Looks a tensor up by name.</summary>
    public bool TryGet(string name, out TensorInfo info) => Header.TryGet(name, out info);

    private readonly ReadCounters _reads = new();

    /// <inheritdoc/>
    public long BytesRead => _reads.Bytes;

    /// <inheritdoc/>
    public TimeSpan ReadTime => _reads.Time;

    /// <summary>Reads raw bytes of a tensor, starting <paramref name="byteOffset"/> bytes into it.</summary>
    public void ReadBytes(TensorInfo tensor, long byteOffset, Span<byte> destination)
    {
        TensorReads.CheckRange(tensor, byteOffset, destination.Length);
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        ReadFully(_handle, destination, DataStart + tensor.Begin + byteOffset, Path);
        _reads.Add(destination.Length, start);
    }

    /// <summary>
    /// Reads <paramref name="destination"/>.Length elements of a float tensor starting at element
    /// <paramref name="elementOffset"/>, converted to F32.
    /// </summary>
    public void ReadSingles(TensorInfo tensor, long elementOffset, Span<float> destination) =>
        TensorReads.ReadSingles(this, tensor, elementOffset, destination, why => new SafetensorsException(K.UnknownDType, Path, tensor.Name, why));

    /// <summary>Reads a whole float tensor as F32 (use only for tensors known to be small).</summary>
    public float[] ReadSingles(TensorInfo tensor) => TensorReads.ReadSingles(this, tensor);

    /// <summary>Copies a tensor's bytes to a stream in bounded chunks.</summary>
    public void CopyTo(TensorInfo tensor, Stream destination) => TensorReads.CopyTo(this, tensor, destination);

    /// <inheritdoc/>
    public void Dispose() => _handle.Dispose();

    private static int ReadFully(SafeFileHandle handle, Span<byte> destination, long offset, string path)
    {
        int total = 0;
        try
        {
            while (total < destination.Length)
            {
                int n = RandomAccess.Read(handle, destination[total..], offset + total);
                if (n == 0)
                    throw new SafetensorsException(K.DataTooShort, path, null, $"unexpected end of file at byte {offset + total}");
                total += n;
            }
        }
        catch (IOException e)
        {
            throw new SafetensorsException(K.Io, path, null, Describe(e), e);
        }
        return total;
    }

    internal static string Describe(Exception e) => e switch
    {
        FileNotFoundException => "file not found",
        DirectoryNotFoundException => "folder not found",
        UnauthorizedAccessException => "permission denied",
        _ => e.Message.TrimEnd('.'),
    };
}
