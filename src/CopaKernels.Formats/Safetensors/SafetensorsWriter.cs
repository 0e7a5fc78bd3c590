using System.Buffers;
using System.Runtime.InteropServices;
using System.Text.Json;
using CopaKernels.Formats.Numerics;

namespace CopaKernels.Formats.Safetensors;

/// <summary>
/// Streams a safetensors file to disk. The header is computed from the declared tensors before any
/// data is written; data then arrives tensor by tensor in <see cref="Layout"/> order, in as many
/// pieces as the caller likes, so no whole file (or whole tensor) is ever held in memory.
/// The file is written under a temporary name in the target folder and renamed into place by
/// <see cref="Commit"/>; disposing an uncommitted writer deletes the temporary file.
/// </summary>
/// <remarks>
/// Layout order is deterministic: by element alignment (largest first), then by name (ordinal),
/// as the reference implementation does, so every tensor's offset is aligned to its element size.
/// </remarks>
public sealed class SafetensorsWriter : IDisposable
{
    private readonly FileStream _stream;
    private readonly string _tempPath;
    private int _index;
    private long _writtenInTensor;
    private bool _committed;
    private readonly bool _flushToDisk;
    private long _writebackFrom;

    /// <summary>Declares the tensors and writes the header to a temporary file beside <paramref name="path"/>.</summary>
    /// <param name="path">Final file path.</param>
    /// <param name="tensors">Every tensor the file will hold.</param>
    /// <param name="metadata"><c>__metadata__</c> strings.</param>
    /// <param name="flushToDisk">
    /// Whether <see cref="Commit"/> waits until the data is on disk before the rename. Writers inside an
    /// <see cref="AtomicFolder"/> pass false: the folder syncs all its files once, before it is moved into
    /// place, so the disk catches up in the background while later files are still being computed.
    /// </param>
    public SafetensorsWriter(string path, IEnumerable<TensorSpec> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        bool flushToDisk = true)
    {
        _flushToDisk = flushToDisk;
        FinalPath = System.IO.Path.GetFullPath(path);
        var layout = PlanLayout(tensors);
        long offset = layout.Count == 0 ? 0 : layout[^1].End;
        Layout = layout;
        DataLength = offset;
        var header = BuildHeader(layout, metadata);
        _tempPath = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(FinalPath)!,
            $".{System.IO.Path.GetFileName(FinalPath)}.{Guid.NewGuid():N}.tmp");
        _stream = new FileStream(_tempPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        try
        {
            Span<byte> prefix = stackalloc byte[8];
            BitConverter.TryWriteBytes(prefix, (ulong)header.Length);
            _stream.Write(prefix);
            _stream.Write(header);
            _stream.SetLength(8 + header.Length + DataLength);
            _stream.Position = 8 + header.Length;
            _writebackFrom = 0;
        }
        catch
        {
            Dispose();
            throw;
        }
        Advance();
    }

    /// <summary>
    /// The data layout the writer uses for these tensors: by element size (largest first), then by
    /// name (ordinal), each offset aligned to its element size.
    /// </summary>
    public static List<TensorInfo> PlanLayout(IEnumerable<TensorSpec> tensors)
    {
        var specs = tensors.ToList();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var s in specs)
        {
            if (s.Name == "__metadata__") throw new ArgumentException("a tensor cannot be named __metadata__");
            if (!names.Add(s.Name)) throw new ArgumentException($"tensor {s.Name} declared twice");
        }
        specs.Sort((a, b) =>
        {
            int c = b.DType.Bits().CompareTo(a.DType.Bits());
            return c != 0 ? c : string.CompareOrdinal(a.Name, b.Name);
        });
        var layout = new List<TensorInfo>(specs.Count);
        long offset = 0;
        foreach (var s in specs)
        {
            long size = s.ByteLength;
            layout.Add(new TensorInfo(s.Name, s.DType, s.Shape, offset, offset + size));
            offset += size;
        }
        return layout;
    }

    /// <summary>Where the file lands on <see cref="Commit"/>.</summary>
    public string FinalPath { get; }

    /// <summary>The tensors in the order their data must be written, with their offsets.</summary>
    public IReadOnlyList<TensorInfo> Layout { get; }

    /// <summary>Total size of the data section.</summary>
    public long DataLength { get; }

    /// <summary>The tensor whose data is expected next, or null when all data has been written.</summary>
    public TensorInfo? Current => _index < Layout.Count ? Layout[_index] : null;

    /// <summary>Appends raw bytes to tensor <paramref name="name"/>, which must be the current one.</summary>
    public void Append(string name, ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty) return;
        var t = Current ?? throw new InvalidOperationException($"all tensors are complete; no room for {name}");
        if (t.Name != name) throw new InvalidOperationException($"expected data for {t.Name}, got {name}");
        if (_writtenInTensor + bytes.Length > t.ByteLength)
            throw new InvalidOperationException($"{name}: {_writtenInTensor + bytes.Length} bytes written, but it has {t.ByteLength}");
        _stream.Write(bytes);
        _writtenInTensor += bytes.Length;
        Advance();
        // Every 32 MiB, hand the kernel what was written so far, so the disk works while we compute.
        long end = _stream.Position;
        if (end - _writebackFrom >= Writeback.Chunk)
        {
            _stream.Flush();
            Writeback.Start(_stream.SafeFileHandle, _writebackFrom, end - _writebackFrom);
            _writebackFrom = end;
        }
    }

    /// <summary>Appends F32 values to tensor <paramref name="name"/>, converted (rounded to nearest-even) to its dtype.</summary>
    public void AppendSingles(string name, ReadOnlySpan<float> values)
    {
        var t = Current ?? throw new InvalidOperationException($"all tensors are complete; no room for {name}");
        if (t.DType == DType.F32) { Append(name, MemoryMarshal.AsBytes(values)); return; }
        int size = t.DType.Bits() / 8;
        const int chunk = 1 << 16;
        var scratch = ArrayPool<byte>.Shared.Rent(chunk * size);
        try
        {
            for (int done = 0; done < values.Length; done += chunk)
            {
                int m = Math.Min(chunk, values.Length - done);
                ElementCodec.Encode(t.DType, values.Slice(done, m), scratch.AsSpan(0, m * size));
                Append(name, scratch.AsSpan(0, m * size));
            }
        }
        finally { ArrayPool<byte>.Shared.Return(scratch); }
    }

    /// <summary>Checks every byte was written, flushes to disk and renames the file into place.</summary>
    public void Commit()
    {
        if (Current is { } t)
            throw new InvalidOperationException($"{t.Name}: {_writtenInTensor} of {t.ByteLength} bytes written");
        _stream.Flush(flushToDisk: _flushToDisk);
        _stream.Dispose();
        File.Move(_tempPath, FinalPath, overwrite: true);
        _committed = true;
    }

    /// <summary>Closes the file; an uncommitted file is deleted.</summary>
    public void Dispose()
    {
        _stream.Dispose();
        if (!_committed)
        {
            try { File.Delete(_tempPath); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    private void Advance()
    {
        // Skip forward over completed (and zero-sized) tensors.
        while (_index < Layout.Count && _writtenInTensor == Layout[_index].ByteLength)
        {
            _index++;
            _writtenInTensor = 0;
        }
    }

    /// <summary>The header JSON for a layout, padded with spaces to a multiple of 8 bytes.</summary>
    public static byte[] BuildHeader(IReadOnlyList<TensorInfo> layout, IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            var meta = new SortedDictionary<string, string>(StringComparer.Ordinal) { ["format"] = "pt" };
            if (metadata != null) foreach (var (k, v) in metadata) meta[k] = v;
            w.WriteStartObject("__metadata__");
            foreach (var (k, v) in meta) w.WriteString(k, v);
            w.WriteEndObject();
            foreach (var t in layout)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", t.DType.Name());
                w.WriteStartArray("shape");
                foreach (var d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(t.Begin);
                w.WriteNumberValue(t.End);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        int len = (int)ms.Length;
        int padded = (len + 7) / 8 * 8;
        var bytes = new byte[padded];
        ms.GetBuffer().AsSpan(0, len).CopyTo(bytes);
        bytes.AsSpan(len).Fill((byte)' ');
        return bytes;
    }
}
