using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace CopaKernels.Formats.Torch;

/// <summary>One file of a zip archive: its central-directory record, checked against its local header.</summary>
/// <param name="Name">The entry's name (validated: relative, no <c>..</c>, no backslash).</param>
/// <param name="Method">Compression method: 0 stored, 8 deflate (no other is accepted).</param>
/// <param name="CompressedSize">Bytes the entry occupies in the file.</param>
/// <param name="Size">Bytes once decompressed (equal to <paramref name="CompressedSize"/> when stored).</param>
/// <param name="Crc">The CRC-32 the directory records.</param>
/// <param name="HeaderOffset">File offset of the local header.</param>
/// <param name="DataOffset">File offset of the entry's first data byte (after the local header).</param>
internal sealed record ZipEntry(string Name, int Method, long CompressedSize, long Size, uint Crc, long HeaderOffset, long DataOffset)
{
    /// <summary>One past the entry's last data byte.</summary>
    public long DataEnd => DataOffset + CompressedSize;
}

/// <summary>
/// Reads a zip archive's central directory (APPNOTE 6.3), zip64 included, without trusting it: every
/// size and offset is checked against the file and against the other records, each local header is
/// read and must agree with the directory, and entries may neither overlap nor run into the directory.
/// Only what a <c>torch.save</c> archive can hold is accepted: one disk, no encryption, stored or
/// deflated entries with plain relative names.
/// </summary>
internal static class ZipDirectory
{
    private const uint LocalSig = 0x04034b50, CentralSig = 0x02014b50, EndSig = 0x06054b50;
    private const uint End64Sig = 0x06064b50, Locator64Sig = 0x07064b50;
    private const int LocalSize = 30, CentralSize = 46, EndSize = 22, Locator64Size = 20, End64Size = 56;

    /// <summary>
    /// Largest central directory read, in bytes. A record is 46 bytes plus a name, so 64 MiB is room
    /// for about a million entries, far beyond any checkpoint (one entry per storage), while bounding
    /// what a forged directory size can make the reader allocate.
    /// </summary>
    public const int MaxDirectorySize = 64 << 20;

    /// <summary>The entries in directory order. Throws <see cref="TorchCheckpointException"/> on anything malformed.</summary>
    public static IReadOnlyList<ZipEntry> Read(SafeFileHandle file, long length, string path)
    {
        Exception Bad(string reason) => new TorchCheckpointException(path, null, reason);

        // The end record is the last thing in the file, followed only by its comment (at most 64 KiB):
        // the one whose comment length reaches the end of the file exactly.
        var tail = new byte[(int)Math.Min(length, EndSize + 0xFFFF)];
        ReadAt(file, tail, length - tail.Length, path);
        int p = tail.Length - EndSize;
        while (p >= 0 && !(U32(tail, p) == EndSig && p + EndSize + U16(tail, p + 20) == tail.Length)) p--;
        if (p < 0) throw Bad("no zip end-of-central-directory record: the file is truncated or not a zip archive");
        long endAt = length - tail.Length + p;
        long disk = U16(tail, p + 4), cdDisk = U16(tail, p + 6), onDisk = U16(tail, p + 8), count = U16(tail, p + 10);
        long cdSize = U32(tail, p + 12), cdOffset = U32(tail, p + 16);
        long cdEnd = endAt;

        var locator = new byte[Locator64Size];
        if (endAt >= Locator64Size)
            ReadAt(file, locator, endAt - Locator64Size, path);
        if (endAt >= Locator64Size && U32(locator, 0) == Locator64Sig)
        {
            // Zip64: the 64-bit end record holds the real counts and offsets; the 32-bit fields hold
            // either the same values or the 0xFFFF... marker, nothing else.
            if (U32(locator, 4) != 0 || U32(locator, 16) != 1) throw Bad("multi-disk (split) zip archives are not supported");
            long at = I64(locator, 8, "zip64 end record offset", path);
            if (at > endAt - Locator64Size - End64Size) throw Bad($"zip64 end record offset {at} is past the end of the archive");
            var z = new byte[End64Size];
            ReadAt(file, z, at, path);
            if (U32(z, 0) != End64Sig) throw Bad($"no zip64 end record at byte {at}, where the zip64 locator points");
            if (BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(4)) != (ulong)(endAt - Locator64Size - at - 12))
                throw Bad("zip64 end record size disagrees with where the zip64 locator begins");
            long disk64 = U32(z, 16), cdDisk64 = U32(z, 20);
            long onDisk64 = I64(z, 24, "entry count", path), count64 = I64(z, 32, "entry count", path);
            long cdSize64 = I64(z, 40, "central directory size", path), cdOffset64 = I64(z, 48, "central directory offset", path);
            if (!Agrees(disk, disk64, 0xFFFF) || !Agrees(cdDisk, cdDisk64, 0xFFFF) || !Agrees(onDisk, onDisk64, 0xFFFF)
                || !Agrees(count, count64, 0xFFFF) || !Agrees(cdSize, cdSize64, 0xFFFFFFFF) || !Agrees(cdOffset, cdOffset64, 0xFFFFFFFF))
                throw Bad("zip64 end record disagrees with the end-of-central-directory record");
            (disk, cdDisk, onDisk, count, cdSize, cdOffset, cdEnd) = (disk64, cdDisk64, onDisk64, count64, cdSize64, cdOffset64, at);
        }
        else if (count == 0xFFFF || onDisk == 0xFFFF || cdSize == 0xFFFFFFFF || cdOffset == 0xFFFFFFFF)
            throw Bad("the end-of-central-directory record defers to zip64, but there is no zip64 end record");

        if (disk != 0 || cdDisk != 0 || onDisk != count) throw Bad("multi-disk (split) zip archives are not supported");
        if (cdOffset > cdEnd || cdSize != cdEnd - cdOffset)
            throw Bad($"central directory (offset {cdOffset}, {cdSize} bytes) does not end where the end record begins (byte {cdEnd}): the file is truncated or corrupt");
        if (cdSize > MaxDirectorySize) throw Bad($"central directory of {cdSize} bytes is over the {MaxDirectorySize >> 20} MiB this reader accepts");
        if (count > cdSize / CentralSize) throw Bad($"{count} entries cannot fit in a central directory of {cdSize} bytes");

        var cd = new byte[cdSize];
        ReadAt(file, cd, cdOffset, path);
        var entries = new List<ZipEntry>((int)count);
        var names = new HashSet<string>(StringComparer.Ordinal);
        int q = 0;
        for (long i = 0; i < count; i++)
        {
            if (q > cd.Length - CentralSize || U32(cd, q) != CentralSig) throw Bad($"central directory record {i} is corrupt (at byte {cdOffset + q})");
            int flags = U16(cd, q + 8), method = U16(cd, q + 10);
            uint crc = U32(cd, q + 16);
            long compressed = U32(cd, q + 20), size = U32(cd, q + 24);
            int nameLength = U16(cd, q + 28), extraLength = U16(cd, q + 30), commentLength = U16(cd, q + 32);
            long diskStart = U16(cd, q + 34), offset = U32(cd, q + 42);
            int next = q + CentralSize + nameLength + extraLength + commentLength;
            if (next > cd.Length) throw Bad($"central directory record {i} runs past the end of the directory");
            var nameBytes = cd.AsSpan(q + CentralSize, nameLength);
            string name = Name(nameBytes, path);
            var extra = cd.AsSpan(q + CentralSize + nameLength, extraLength);
            // Zip64 extra field: only the fields whose 32-bit values are the marker, in this order.
            if (size == 0xFFFFFFFF || compressed == 0xFFFFFFFF || offset == 0xFFFFFFFF || diskStart == 0xFFFF)
            {
                var z = Zip64Extra(extra, name, path);
                int at = 0;
                if (size == 0xFFFFFFFF) size = Field64(z, ref at, name, path);
                if (compressed == 0xFFFFFFFF) compressed = Field64(z, ref at, name, path);
                if (offset == 0xFFFFFFFF) offset = Field64(z, ref at, name, path);
                if (diskStart == 0xFFFF)
                {
                    if (at + 4 > z.Length) throw Bad($"entry {name}: zip64 extra field is too short");
                    diskStart = U32(z, at);
                }
            }
            else Zip64Extra(extra, name, path, required: false);
            if (diskStart != 0) throw Bad("multi-disk (split) zip archives are not supported");
            if ((flags & 0x41) != 0 || method == 99) throw Bad($"entry {name} is encrypted");
            if (method is not (0 or 8)) throw Bad($"entry {name} uses compression method {method}; only stored and deflate entries are read");
            if (method == 0 && compressed != size) throw Bad($"entry {name} is stored but its sizes differ ({compressed} and {size} bytes)");
            if (!names.Add(name)) throw Bad($"entry {name} appears twice");

            var entry = CheckLocal(file, path, name, nameBytes, flags, method, crc, compressed, size, offset, cdOffset);
            entries.Add(entry);
            q = next;
        }
        if (q != cd.Length) throw Bad($"central directory has {cd.Length - q} bytes after its {count} records");

        // No two entries may share bytes: each local header starts at or after the previous entry's data.
        var byOffset = entries.OrderBy(e => e.HeaderOffset).ToArray();
        for (int i = 1; i < byOffset.Length; i++)
            if (byOffset[i].HeaderOffset < byOffset[i - 1].DataEnd)
                throw Bad($"entries {byOffset[i - 1].Name} and {byOffset[i].Name} overlap");
        return entries;
    }

    /// <summary>Reads an entry's local header, checks it against the directory, and returns the entry with its data offset.</summary>
    private static ZipEntry CheckLocal(SafeFileHandle file, string path, string name, ReadOnlySpan<byte> nameBytes, int flags, int method,
        uint crc, long compressed, long size, long offset, long cdOffset)
    {
        Exception Bad(string reason) => new TorchCheckpointException(path, null, $"entry {name}: {reason}");
        if (offset > cdOffset - LocalSize) throw Bad($"local header offset {offset} is past the start of the central directory");
        var h = new byte[LocalSize];
        ReadAt(file, h, offset, path);
        if (U32(h, 0) != LocalSig) throw Bad($"no local header at byte {offset}");
        int nameLength = U16(h, 26), extraLength = U16(h, 28);
        long dataOffset = offset + LocalSize + nameLength + extraLength;
        if (dataOffset > cdOffset) throw Bad("local header runs into the central directory");
        var rest = new byte[nameLength + extraLength];
        ReadAt(file, rest, offset + LocalSize, path);
        if (!rest.AsSpan(0, nameLength).SequenceEqual(nameBytes)) throw Bad("local header names another file");
        int localFlags = U16(h, 6), localMethod = U16(h, 8);
        if ((localFlags & 0x41) != 0) throw Bad("encrypted");
        if (localMethod != method) throw Bad($"local header says compression method {localMethod}, the directory {method}");
        // With bit 3 (data descriptor, which torch.save sets) the local CRC and sizes may be left zero.
        if ((localFlags & 8) == 0)
        {
            long localCompressed = U32(h, 18), localSize = U32(h, 22);
            if (localSize == 0xFFFFFFFF || localCompressed == 0xFFFFFFFF)
            {
                // The local zip64 field holds both sizes, uncompressed first.
                var z = Zip64Extra(rest.AsSpan(nameLength), name, path);
                int at = 0;
                localSize = Field64(z, ref at, name, path);
                localCompressed = Field64(z, ref at, name, path);
            }
            else Zip64Extra(rest.AsSpan(nameLength), name, path, required: false);
            if (U32(h, 14) != crc || localCompressed != compressed || localSize != size)
                throw Bad("local header's CRC or sizes disagree with the central directory");
        }
        if (compressed > cdOffset - dataOffset) throw Bad($"its {compressed} bytes run past the start of the central directory");
        return new ZipEntry(name, method, compressed, size, crc, offset, dataOffset);
    }

    /// <summary>
    /// Reads a whole entry (decompressing deflate) of at most <paramref name="max"/> bytes and checks its CRC-32:
    /// for the small records of a checkpoint, never for tensor data.
    /// </summary>
    public static byte[] ReadEntry(SafeFileHandle file, ZipEntry e, long max, string path)
    {
        if (e.Size > max) throw new TorchCheckpointException(path, null, $"entry {e.Name} is {e.Size} bytes, over the {max} bytes this reader accepts for it");
        if (e.Method == 8 && e.CompressedSize > max)
            throw new TorchCheckpointException(path, null, $"entry {e.Name} is {e.CompressedSize} bytes compressed, over the {max} bytes this reader accepts for it");
        var raw = new byte[e.CompressedSize];
        ReadAt(file, raw, e.DataOffset, path);
        byte[] data = raw;
        if (e.Method == 8)
        {
            data = new byte[e.Size];
            try
            {
                using var inflate = new DeflateStream(new MemoryStream(raw), CompressionMode.Decompress);
                inflate.ReadExactly(data);
                if (inflate.ReadByte() != -1) throw new InvalidDataException("more data than its recorded size");
            }
            catch (Exception x) when (x is InvalidDataException or EndOfStreamException)
            {
                throw new TorchCheckpointException(path, null, $"entry {e.Name} does not inflate to its recorded {e.Size} bytes: {x.Message.TrimEnd('.')}", x);
            }
        }
        if (Crc32.Of(data) != e.Crc) throw new TorchCheckpointException(path, null, $"entry {e.Name} fails its CRC-32 check: the file is corrupt");
        return data;
    }

    /// <summary>Reads exactly <paramref name="destination"/>.Length bytes at <paramref name="offset"/>; a short read is a truncated file.</summary>
    public static void ReadAt(SafeFileHandle file, Span<byte> destination, long offset, string path)
    {
        try
        {
            for (int done = 0; done < destination.Length;)
            {
                int n = RandomAccess.Read(file, destination[done..], offset + done);
                if (n == 0) throw new TorchCheckpointException(path, null, $"unexpected end of file at byte {offset + done}: the file is truncated");
                done += n;
            }
        }
        catch (IOException x)
        {
            throw new TorchCheckpointException(path, null, x.Message.TrimEnd('.'), x);
        }
    }

    /// <summary>
    /// A validated entry name: UTF-8, relative, '/'-separated, no empty, <c>.</c> or <c>..</c> segment, no
    /// backslash, colon or control character, so that no name can point outside the archive's folder
    /// (a folder entry keeps its trailing '/').
    /// </summary>
    private static string Name(ReadOnlySpan<byte> bytes, string path)
    {
        string name;
        try { name = new UTF8Encoding(false, true).GetString(bytes); }
        catch (DecoderFallbackException x) { throw new TorchCheckpointException(path, null, "an entry name is not valid UTF-8", x); }
        string shown = string.Concat(name.Select(c => char.IsControl(c) ? '?' : c));
        var body = name.EndsWith('/') ? name[..^1] : name;
        if (body.Length == 0 || name.Any(c => c is '\\' or ':' || char.IsControl(c))
            || body.Split('/').Any(s => s is "" or "." or ".."))
            throw new TorchCheckpointException(path, null, $"entry name \"{shown}\" is not a plain relative path (absolute, '..', '.', empty segment, backslash, colon or control character)");
        return name;
    }

    /// <summary>
    /// Walks an extra field (id, size, data records that must tile it exactly) and returns the zip64
    /// record's data, or an empty span when there is none and <paramref name="required"/> is false.
    /// </summary>
    private static ReadOnlySpan<byte> Zip64Extra(ReadOnlySpan<byte> extra, string name, string path, bool required = true)
    {
        ReadOnlySpan<byte> found = default;
        bool seen = false;
        for (int at = 0; at < extra.Length;)
        {
            // Some writers pad the extra field with fewer than 4 bytes (alignment); torch pads with a full record.
            if (extra.Length - at < 4) break;
            int id = BinaryPrimitives.ReadUInt16LittleEndian(extra[at..]), n = BinaryPrimitives.ReadUInt16LittleEndian(extra[(at + 2)..]);
            if (n > extra.Length - at - 4) throw new TorchCheckpointException(path, null, $"entry {name}: extra field record runs past the extra field");
            if (id == 1)
            {
                if (seen) throw new TorchCheckpointException(path, null, $"entry {name}: two zip64 extra fields");
                found = extra.Slice(at + 4, n);
                seen = true;
            }
            at += 4 + n;
        }
        if (required && !seen) throw new TorchCheckpointException(path, null, $"entry {name}: a size or offset defers to zip64, but there is no zip64 extra field");
        return found;
    }

    private static long Field64(ReadOnlySpan<byte> z, ref int at, string name, string path)
    {
        if (at + 8 > z.Length) throw new TorchCheckpointException(path, null, $"entry {name}: zip64 extra field is too short");
        ulong v = BinaryPrimitives.ReadUInt64LittleEndian(z[at..]);
        at += 8;
        return v <= long.MaxValue ? (long)v : throw new TorchCheckpointException(path, null, $"entry {name}: zip64 size or offset {v} is out of range");
    }

    private static bool Agrees(long value32, long value64, long marker) => value32 == marker || value32 == value64;

    private static ushort U16(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt16LittleEndian(b[at..]);
    private static uint U32(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt32LittleEndian(b[at..]);

    private static long I64(ReadOnlySpan<byte> b, int at, string what, string path)
    {
        ulong v = BinaryPrimitives.ReadUInt64LittleEndian(b[at..]);
        return v <= long.MaxValue ? (long)v : throw new TorchCheckpointException(path, null, $"zip64 {what} {v} is out of range");
    }

    /// <summary>CRC-32 (ISO-HDLC, reflected polynomial 0xEDB88320), the checksum zip records.</summary>
    internal static class Crc32
    {
        private static readonly uint[] s_table = Enumerable.Range(0, 256).Select(n =>
        {
            uint c = (uint)n;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
            return c;
        }).ToArray();

        public static uint Of(ReadOnlySpan<byte> data)
        {
            uint c = 0xFFFFFFFF;
            foreach (byte b in data) c = s_table[(c ^ b) & 0xFF] ^ (c >> 8);
            return ~c;
        }
    }
}
