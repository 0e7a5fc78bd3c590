using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using CopaKernels.Formats.Torch;

namespace CopaKernels.Tests.Formats;

/// <summary>Writes pickle opcodes one by one (names as in Python's pickletools), for hand-made <c>data.pkl</c> files.</summary>
internal sealed class Pickle
{
    private readonly List<byte> _b = [];

    public byte[] Bytes => [.. _b];

    public Pickle Op(params byte[] bytes) { _b.AddRange(bytes); return this; }
    public Pickle Op(char op, params byte[] operand) => Op((byte)op).Op(operand);
    public Pickle Proto(int v = 2) => Op(0x80, (byte)v);
    public Pickle Mark() => Op('(');
    public Pickle Stop() => Op('.');
    public Pickle EmptyDict() => Op('}');
    public Pickle EmptyList() => Op(']');
    public Pickle EmptyTuple() => Op(')');
    public Pickle Tuple() => Op('t');
    public Pickle Tuple1() => Op(0x85);
    public Pickle Tuple2() => Op(0x86);
    public Pickle Tuple3() => Op(0x87);
    public Pickle SetItem() => Op('s');
    public Pickle SetItems() => Op('u');
    public Pickle Append() => Op('a');
    public Pickle Reduce() => Op('R');
    public Pickle Build() => Op('b');
    public Pickle PersId() => Op('Q');
    public Pickle False() => Op(0x89);
    public Pickle True() => Op(0x88);
    public Pickle None() => Op('N');
    public Pickle Put(int i) => Op('q', (byte)i);
    public Pickle Get(int i) => Op('h', (byte)i);

    public Pickle Str(string s)
    {
        var u = Encoding.UTF8.GetBytes(s);
        Op('X');
        Span<byte> n = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(n, u.Length);
        return Op(n.ToArray()).Op(u);
    }

    /// <summary>An integer: BININT1, BININT2, BININT or LONG1, the smallest that holds it.</summary>
    public Pickle Int(long v)
    {
        if (v is >= 0 and < 256) return Op('K', (byte)v);
        if (v is >= 0 and < 65536) return Op('M', (byte)v, (byte)(v >> 8));
        if (v is >= int.MinValue and <= int.MaxValue) return Op((byte)'J', (byte)v, (byte)(v >> 8), (byte)(v >> 16), (byte)(v >> 24));
        return Op(0x8a, 8).Op(BitConverter.GetBytes(v));
    }

    public Pickle Global(string module, string name) => Op('c').Op(Encoding.UTF8.GetBytes($"{module}\n{name}\n"));
    public Pickle Ints(params long[] v) { Mark(); foreach (var x in v) Int(x); return Tuple(); }

    /// <summary>Pushes a tensor as torch.save pickles one: <c>_rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())</c>.</summary>
    public Pickle Tensor(string key, string storageType, long numel, long offset, long[] size, long[]? stride = null)
    {
        stride ??= Contiguous(size);
        Global("torch._utils", "_rebuild_tensor_v2").Mark();
        Mark().Str("storage").Global("torch", storageType).Str(key).Str("cpu").Int(numel).Tuple().PersId();
        Int(offset).Ints(size).Ints(stride).False().Global("collections", "OrderedDict").EmptyTuple().Reduce();
        return Tuple().Reduce();
    }

    /// <summary>A whole state dict pickle: PROTO 2, a dict filled by SETITEMS, STOP.</summary>
    public static byte[] StateDict(params (string Name, Action<Pickle> Value)[] items)
    {
        var p = new Pickle().Proto().EmptyDict().Mark();
        foreach (var (name, value) in items)
        {
            p.Str(name);
            value(p);
        }
        return p.SetItems().Stop().Bytes;
    }

    public static long[] Contiguous(long[] size)
    {
        var s = new long[size.Length];
        long n = 1;
        for (int i = size.Length - 1; i >= 0; i--) { s[i] = n; n *= size[i]; }
        return s;
    }
}

/// <summary>One entry for <see cref="Zip"/>.</summary>
/// <param name="Name">Entry name.</param>
/// <param name="Data">Its bytes (stored, or deflated when <paramref name="Deflate"/>).</param>
/// <param name="Deflate">Compress with deflate.</param>
/// <param name="Flags">General-purpose flags of both headers.</param>
/// <param name="Gap">Zero bytes written (by seeking, so sparse in a file) before <paramref name="Data"/> and counted in its size.</param>
/// <param name="Hidden">Listed in the central directory only, at <paramref name="HeaderOffset"/>; nothing written for it.</param>
/// <param name="HeaderOffset">Local header offset to record in the central directory (default: where it was written).</param>
internal sealed record ZEntry(string Name, byte[] Data, bool Deflate = false, int Flags = 0, long Gap = 0, bool Hidden = false, long? HeaderOffset = null)
{
    public long Size => Gap + Data.Length;
}

/// <summary>A minimal zip writer (APPNOTE 6.3) whose every field a test can bend.</summary>
internal static class Zip
{
    public static byte[] Bytes(IReadOnlyList<ZEntry> entries, bool zip64 = false)
    {
        var ms = new MemoryStream();
        Write(ms, entries, zip64);
        return ms.ToArray();
    }

    /// <summary>A torch-like checkpoint: <c>archive/data.pkl</c>, <c>archive/data/KEY</c> for each storage, <c>archive/version</c>.</summary>
    public static byte[] Checkpoint(byte[] pickle, params (string Key, byte[] Data)[] storages)
        => Bytes([new("archive/data.pkl", pickle), .. storages.Select(s => new ZEntry($"archive/data/{s.Key}", s.Data)), new("archive/version", "3\n"u8.ToArray())]);

    /// <summary>The local header and data of <paramref name="e"/>, as <see cref="Write"/> writes them.</summary>
    public static byte[] Local(ZEntry e, bool zip64 = false)
    {
        var ms = new MemoryStream();
        WriteLocal(ms, e, Body(e), zip64);
        return ms.ToArray();
    }

    public static void Write(Stream s, IReadOnlyList<ZEntry> entries, bool zip64 = false)
    {
        var offsets = new long[entries.Count];
        var bodies = entries.Select(Body).ToArray();
        for (int i = 0; i < entries.Count; i++)
        {
            offsets[i] = entries[i].HeaderOffset ?? s.Position;
            if (!entries[i].Hidden) WriteLocal(s, entries[i], bodies[i], zip64);
        }
        long cdStart = s.Position;
        var w = new BinaryWriter(s);
        for (int i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            var name = Encoding.UTF8.GetBytes(e.Name);
            long compressed = e.Gap + bodies[i].Length;
            w.Write(0x02014b50u); w.Write((ushort)45); w.Write((ushort)45); w.Write((ushort)e.Flags); w.Write((ushort)(e.Deflate ? 8 : 0));
            w.Write(0u); w.Write(Crc(e)); 
            w.Write(zip64 ? 0xFFFFFFFFu : (uint)compressed); w.Write(zip64 ? 0xFFFFFFFFu : (uint)e.Size);
            w.Write((ushort)name.Length); w.Write((ushort)(zip64 ? 28 : 0)); w.Write((ushort)0); w.Write((ushort)0); w.Write((ushort)0); w.Write(0u);
            w.Write(zip64 ? 0xFFFFFFFFu : (uint)offsets[i]);
            w.Write(name);
            if (zip64) { w.Write((ushort)1); w.Write((ushort)24); w.Write(e.Size); w.Write(compressed); w.Write(offsets[i]); }
        }
        long cdEnd = s.Position;
        if (zip64)
        {
            w.Write(0x06064b50u); w.Write(44UL); w.Write((ushort)45); w.Write((ushort)45); w.Write(0u); w.Write(0u);
            w.Write((ulong)entries.Count); w.Write((ulong)entries.Count); w.Write((ulong)(cdEnd - cdStart)); w.Write((ulong)cdStart);
            w.Write(0x07064b50u); w.Write(0u); w.Write((ulong)cdEnd); w.Write(1u);
        }
        w.Write(0x06054b50u); w.Write((ushort)0); w.Write((ushort)0);
        w.Write(zip64 ? (ushort)0xFFFF : (ushort)entries.Count); w.Write(zip64 ? (ushort)0xFFFF : (ushort)entries.Count);
        w.Write(zip64 ? 0xFFFFFFFFu : (uint)(cdEnd - cdStart)); w.Write(zip64 ? 0xFFFFFFFFu : (uint)cdStart); w.Write((ushort)0);
        w.Flush();
    }

    private static byte[] Body(ZEntry e)
    {
        if (!e.Deflate) return e.Data;
        var ms = new MemoryStream();
        using (var d = new DeflateStream(ms, CompressionLevel.Optimal, leaveOpen: true)) d.Write(e.Data);
        return ms.ToArray();
    }

    private static uint Crc(ZEntry e) => ZipDirectory.Crc32.Of(e.Data);

    private static void WriteLocal(Stream s, ZEntry e, byte[] body, bool zip64)
    {
        var w = new BinaryWriter(s);
        var name = Encoding.UTF8.GetBytes(e.Name);
        long compressed = e.Gap + body.Length;
        w.Write(0x04034b50u); w.Write((ushort)45); w.Write((ushort)e.Flags); w.Write((ushort)(e.Deflate ? 8 : 0)); w.Write(0u);
        w.Write(Crc(e)); w.Write(zip64 ? 0xFFFFFFFFu : (uint)compressed); w.Write(zip64 ? 0xFFFFFFFFu : (uint)e.Size);
        w.Write((ushort)name.Length); w.Write((ushort)(zip64 ? 20 : 0));
        w.Write(name);
        if (zip64) { w.Write((ushort)1); w.Write((ushort)16); w.Write(e.Size); w.Write(compressed); }
        w.Flush();
        if (e.Gap > 0) s.Seek(e.Gap, SeekOrigin.Current);
        s.Write(body);
    }

    /// <summary>Offset of the central-directory record of <paramref name="name"/> in <paramref name="zip"/>.</summary>
    public static int Central(byte[] zip, string name)
    {
        var needle = Encoding.UTF8.GetBytes(name);
        for (int i = zip.Length - 46; i >= 0; i--)
            if (BinaryPrimitives.ReadUInt32LittleEndian(zip.AsSpan(i)) == 0x02014b50 && zip.AsSpan(i + 46).StartsWith(needle)
                && BinaryPrimitives.ReadUInt16LittleEndian(zip.AsSpan(i + 28)) == needle.Length)
                return i;
        throw new ArgumentException($"no central record for {name}");
    }

    /// <summary>Offset of the end-of-central-directory record.</summary>
    public static int End(byte[] zip) => zip.Length - 22;
}
