using System.Text;
using CopaKernels.Formats.Safetensors;
using Microsoft.Win32.SafeHandles;

namespace CopaKernels.Formats.Torch;

/// <summary>
/// A PyTorch checkpoint in the zip format of <c>torch.save</c> (torch ≥ 1.6), opened read-only, as a
/// flat state dict of tensors. The archive holds one folder (any name) with <c>data.pkl</c>, the
/// pickled dict, and one stored (uncompressed) entry per storage under <c>data/</c>. Open reads the
/// zip directory and <c>data.pkl</c> only, and unpickles it without executing anything
/// (<see cref="StateDictUnpickler"/>); tensor bytes are read from the storage entries in place, with
/// positioned reads, when asked for. A tensor's <see cref="TensorInfo.Begin"/> and
/// <see cref="TensorInfo.End"/> are absolute file offsets; several tensors may view one storage.
/// </summary>
public sealed class TorchCheckpoint : ITensorFile
{
    /// <summary>
    /// Largest <c>data.pkl</c> read, in bytes. It is read whole into memory; a state dict pickles to
    /// about 200 bytes per tensor, so 64 MiB is hundreds of times what any real checkpoint needs,
    /// while a forged size cannot make the reader allocate more.
    /// </summary>
    public const int MaxPickleSize = 64 << 20;

    /// <summary>The first bytes of the legacy (pre-zip) format: PROTO 2, then the magic number 0x1950a86a20f9469cfc6c as LONG1.</summary>
    private static readonly byte[] s_legacyMagic = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

    private const string Resave = "load it in torch and save it again with torch.save(state_dict, path) (torch ≥ 1.6 writes the zip format), "
        + "or save it as safetensors with safetensors.torch.save_file(state_dict, path)";

    private readonly SafeFileHandle _handle;
    private readonly TensorInfo[] _tensors;
    private readonly Dictionary<string, TensorInfo> _byName;

    private TorchCheckpoint(string path, SafeFileHandle handle, FileIdentity identity, long length, string archiveName, TensorInfo[] tensors)
    {
        Path = path;
        _handle = handle;
        Identity = identity;
        FileLength = length;
        ArchiveName = archiveName;
        _tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <inheritdoc/>
    public string Path { get; }

    /// <inheritdoc/>
    public long FileLength { get; }

    /// <inheritdoc/>
    public FileIdentity Identity { get; }

    /// <summary>The archive's top-level folder (torch.save names it after the file, e.g. <c>archive</c>).</summary>
    public string ArchiveName { get; }

    /// <summary>The tensors, in the state dict's order.</summary>
    public IReadOnlyList<TensorInfo> Tensors => _tensors;

    /// <summary>
    /// Whether <paramref name="path"/> should be read as a torch.save checkpoint rather than as
    /// safetensors: its name ends in <c>.bin</c>, <c>.pt</c> or <c>.pth</c> (the names such files go by),
    /// or it starts with the zip signature or the legacy format's first bytes (read as a safetensors
    /// header length, the one is a single exact size and the other over
    /// <see cref="SafetensorsHeader.MaxHeaderSize"/>). <see cref="Open"/> then says what is wrong with it.
    /// </summary>
    public static bool LooksLikeCheckpoint(string path)
    {
        if (System.IO.Path.GetExtension(path).ToLowerInvariant() is ".bin" or ".pt" or ".pth") return true;
        Span<byte> head = stackalloc byte[4];
        try
        {
            using var f = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            return RandomAccess.Read(f, head, 0) == 4 && (head.SequenceEqual("PK\x03\x04"u8) || head.SequenceEqual(s_legacyMagic.AsSpan(0, 4)));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    /// <summary>Opens and validates a checkpoint. Throws <see cref="TorchCheckpointException"/> on anything malformed or unsupported.</summary>
    public static TorchCheckpoint Open(string path)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("checkpoint I/O needs a little-endian machine");
        SafeFileHandle handle;
        try { handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new TorchCheckpointException(path, null, SafetensorsFile.Describe(e), e);
        }
        try
        {
            var identity = FileIdentity.Of(handle);
            long length = RandomAccess.GetLength(handle);
            var head = new byte[(int)Math.Min(length, s_legacyMagic.Length)];
            ZipDirectory.ReadAt(handle, head, 0, path);
            if (!head.AsSpan().StartsWith("PK\x03\x04"u8))
                throw new TorchCheckpointException(path, null, head.AsSpan().SequenceEqual(s_legacyMagic)
                    ? "a PyTorch checkpoint in the legacy (pre-1.6) format, which is not read: " + Resave
                    : head is [0x80, ..] ? "a bare pickle, not a torch.save zip checkpoint: " + Resave
                    : "not a PyTorch zip checkpoint (no zip signature at the start)");
            var entries = ZipDirectory.Read(handle, length, path);
            var (archive, byName) = Folder(entries, path);

            if (byName.TryGetValue(archive + "/byteorder", out var order))
            {
                var text = Encoding.ASCII.GetString(ZipDirectory.ReadEntry(handle, order, 16, path));
                if (text != "little")
                    throw new TorchCheckpointException(path, null, text == "big"
                        ? "a big-endian checkpoint (byteorder \"big\"), which is not read: load it in torch on any machine and save it as safetensors"
                        : $"unknown byteorder \"{text.Trim()}\"");
            }
            if (!byName.TryGetValue(archive + "/data.pkl", out var pkl))
                throw new TorchCheckpointException(path, null, $"no {archive}/data.pkl: not a torch.save checkpoint");
            var pickle = ZipDirectory.ReadEntry(handle, pkl, MaxPickleSize, path);
            var tensors = StateDictUnpickler.Parse(pickle, pkl.Name, path)
                .Select(t => Locate(t.Name, t.Tensor, byName, archive, path)).ToArray();
            return new TorchCheckpoint(path, handle, identity, length, archive, tensors);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>The archive's one top-level folder, and the entries by name; every entry must lie inside it.</summary>
    private static (string Archive, Dictionary<string, ZipEntry> ByName) Folder(IReadOnlyList<ZipEntry> entries, string path)
    {
        if (entries.Count == 0) throw new TorchCheckpointException(path, null, "the zip archive is empty");
        if (!entries[0].Name.Contains('/'))
            throw new TorchCheckpointException(path, null, $"entry {entries[0].Name} is not in a folder (torch.save puts every entry in one folder)");
        var archive = entries[0].Name.Split('/')[0];
        var byName = new Dictionary<string, ZipEntry>(StringComparer.Ordinal);
        foreach (var e in entries)
        {
            if (!e.Name.StartsWith(archive + "/", StringComparison.Ordinal) || e.Name.Length == archive.Length + 1 && e.Size != 0)
                throw new TorchCheckpointException(path, null, $"entry {e.Name} is outside the archive's folder {archive}/ (torch.save puts every entry in one folder)");
            byName.Add(e.Name, e);
        }
        return (archive, byName);
    }

    /// <summary>
    /// Checks one tensor against its storage and entry (element type, shape, contiguity, bounds) and
    /// gives its absolute byte range in the file.
    /// </summary>
    private static TensorInfo Locate(string name, TorchTensor t, Dictionary<string, ZipEntry> entries, string archive, string path)
    {
        Exception Bad(string reason) => new TorchCheckpointException(path, name, reason);
        var s = t.Storage;
        int size = s.DType.Bits() / 8;
        string shape = "[" + string.Join(", ", t.Size) + "]";
        if (t.Size.Any(d => d < 0) || t.Stride.Any(d => d < 0)) throw Bad($"negative size or stride (shape {shape}, strides ({string.Join(", ", t.Stride)}))");
        long count = 1;
        try { foreach (var d in t.Size) count = checked(count * d); }
        catch (OverflowException) { throw Bad($"shape {shape} overflows"); }
        if (s.DType.ByteSize(count) is not { } bytes) throw Bad($"shape {shape} overflows");
        // Row-major contiguous: each stride is the product of the later sizes (torch ignores the stride of a size-1 dimension).
        if (count > 0)
        {
            long expected = 1;
            for (int i = t.Size.Length - 1; i >= 0; i--)
            {
                if (t.Size[i] != 1 && t.Stride[i] != expected)
                    throw Bad($"non-contiguous (shape {shape}, strides ({string.Join(", ", t.Stride)})): save it with .contiguous()");
                expected *= t.Size[i];
            }
        }
        if (t.Offset < 0 || t.Offset > s.Numel || count > s.Numel - t.Offset)
            throw Bad($"elements [{t.Offset}, {t.Offset} + {count}) lie outside its storage {s.Key} of {s.Numel} elements");
        var entryName = $"{archive}/data/{s.Key}";
        if (!entries.TryGetValue(entryName, out var e)) throw Bad($"its storage {s.Key} has no entry {entryName}");
        if (e.Method != 0)
            throw Bad($"storage entry {e.Name} is compressed; torch.save writes storages uncompressed (stored), so save the state dict again with torch.save");
        if (s.DType.ByteSize(s.Numel) != e.Size)
            throw Bad($"storage {s.Key} ({s.TypeName}) declares {s.Numel} elements, but its entry {e.Name} holds {e.Size} bytes");
        long begin = e.DataOffset + t.Offset * size;
        return new TensorInfo(name, s.DType, t.Size, begin, begin + bytes);
    }

    /// <inheritdoc/>
    public bool TryGet(string name, out TensorInfo info) => _byName.TryGetValue(name, out info!);

    private readonly ReadCounters _reads = new();

    /// <inheritdoc/>
    public long BytesRead => _reads.Bytes;

    /// <inheritdoc/>
    public TimeSpan ReadTime => _reads.Time;

    /// <inheritdoc/>
    public void ReadBytes(TensorInfo tensor, long byteOffset, Span<byte> destination)
    {
        TensorReads.CheckRange(tensor, byteOffset, destination.Length);
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        ZipDirectory.ReadAt(_handle, destination, tensor.Begin + byteOffset, Path);
        _reads.Add(destination.Length, start);
    }

    /// <inheritdoc/>
    public void ReadSingles(TensorInfo tensor, long elementOffset, Span<float> destination) =>
        TensorReads.ReadSingles(this, tensor, elementOffset, destination, why => new TorchCheckpointException(Path, tensor.Name, why));

    /// <inheritdoc/>
    public float[] ReadSingles(TensorInfo tensor) => TensorReads.ReadSingles(this, tensor);

    /// <inheritdoc/>
    public void CopyTo(TensorInfo tensor, Stream destination) => TensorReads.CopyTo(this, tensor, destination);

    /// <inheritdoc/>
    public void CheckUnchanged()
    {
        // The path first: a file replaced by a rename also changes the old one's ctime (its link count).
        if ((FileIdentity.ChangeAt(Path, Identity) ?? FileIdentity.Of(_handle).ChangeSince(Identity)) is { } change)
            throw new TorchCheckpointException(Path, null, FileIdentity.ChangedReason(change));
    }

    /// <inheritdoc/>
    public void Dispose() => _handle.Dispose();
}
