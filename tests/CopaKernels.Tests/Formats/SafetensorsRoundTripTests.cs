using System.Text;
using System.Text.Json;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Tests.Formats;

public class SafetensorsRoundTripTests
{
    private static float[] Values(int n, int seed)
    {
        var rng = new Random(seed);
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(10, rng.Next(-6, 5)));
        return v;
    }

    private static float Rounded(DType d, float x) => d switch
    {
        DType.F32 => x,
        DType.BF16 => BitConverter.UInt32BitsToSingle((uint)FloatConversionTests.ReferenceBf16(x) << 16),
        DType.F16 => (float)(Half)x,
        DType.F64 => x,
        _ => throw new ArgumentOutOfRangeException(nameof(d)),
    };

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    [InlineData(DType.F64)]
    public void FloatTensors_RoundTrip_WithOneRounding(DType dtype)
    {
        using var dir = new TempDir();
        var path = dir.File("t.safetensors");
        var a = Values(1027, 1);
        var b = Values(6 * 512 + 7, 2);
        using (var w = new SafetensorsWriter(path, [new("a", dtype, [1027]), new("b.weight", dtype, [3079])], new Dictionary<string, string> { ["origin"] = "test" }))
        {
            foreach (var t in w.Layout)
            {
                var src = t.Name == "a" ? a : b;
                // Stream in uneven pieces to exercise chunked appends.
                for (int off = 0; off < src.Length;)
                {
                    int m = Math.Min(100 + off % 37, src.Length - off);
                    w.AppendSingles(t.Name, src.AsSpan(off, m));
                    off += m;
                }
            }
            w.Commit();
        }
        using var f = SafetensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal("test", f.Metadata["origin"]);
        foreach (var (name, src) in new[] { ("a", a), ("b.weight", b) })
        {
            var got = f.ReadSingles(f.Get(name));
            Assert.Equal(src.Length, got.Length);
            for (int i = 0; i < src.Length; i++)
                Assert.Equal(BitConverter.SingleToUInt32Bits(Rounded(dtype, src[i])), BitConverter.SingleToUInt32Bits(got[i]));
            // A partial read from the middle gives the same values.
            var part = new float[10];
            f.ReadSingles(f.Get(name), 500, part);
            Assert.Equal(got.AsSpan(500, 10).ToArray(), part);
        }
    }

    [Fact]
    public void EveryDType_RawBytes_RoundTrip_AndLayoutIsAlignedAndDeterministic()
    {
        using var dir = new TempDir();
        var specs = Enum.GetValues<DType>().Select(d => new TensorSpec($"t_{d}", d, d.Bits() switch { 4 => [6], 6 => [4], _ => [3, 2] })).ToList();
        specs.Add(new TensorSpec("scalar", DType.F32, []));
        specs.Add(new TensorSpec("empty", DType.BF16, [2, 0]));
        var rng = new Random(3);
        var data = specs.ToDictionary(s => s.Name, s => { var b = new byte[s.ByteLength]; rng.NextBytes(b); return b; });
        byte[] Write(string path, IEnumerable<TensorSpec> order)
        {
            using var w = new SafetensorsWriter(path, order);
            foreach (var t in w.Layout) w.Append(t.Name, data[t.Name]);
            w.Commit();
            return File.ReadAllBytes(path);
        }
        var first = Write(dir.File("a.safetensors"), specs);
        var second = Write(dir.File("b.safetensors"), Enumerable.Reverse(specs));
        Assert.Equal(first, second); // declaration order does not matter
        ulong n = BitConverter.ToUInt64(first);
        Assert.Equal(0UL, (8 + n) % 8);
        var padding = first.AsSpan(8, (int)n).ToArray().Reverse().TakeWhile(c => c != (byte)'}').ToArray();
        Assert.True(padding.Length < 8 && padding.All(c => c == (byte)' '), "header is padded with fewer than 8 spaces");
        using var f = SafetensorsFile.Open(dir.File("a.safetensors"));
        Assert.Equal(specs.Count, f.Tensors.Count);
        foreach (var t in f.Tensors)
        {
            Assert.Equal(0, t.Begin % Math.Max(1, t.DType.Bits() / 8));
            var got = new byte[t.ByteLength];
            f.ReadBytes(t, 0, got);
            Assert.Equal(data[t.Name], got);
        }
        Assert.Empty(f.Get("scalar").Shape);
        Assert.Equal(0, f.Get("empty").ByteLength);
        // The header text is valid JSON with __metadata__ first.
        var header = Encoding.UTF8.GetString(first, 8, (int)n).TrimEnd(' ');
        using var doc = JsonDocument.Parse(header);
        Assert.Equal("__metadata__", doc.RootElement.EnumerateObject().First().Name);
    }

    [Fact]
    public void UncommittedOrIncompleteWriter_LeavesNoFile()
    {
        using var dir = new TempDir();
        var path = dir.File("x.safetensors");
        using (var w = new SafetensorsWriter(path, [new("a", DType.F32, [4])]))
        {
            w.AppendSingles("a", [1f, 2f]);
            var e = Assert.Throws<InvalidOperationException>(() => w.Commit());
            Assert.Contains("a", e.Message);
        }
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
        using (var w = new SafetensorsWriter(path, [new("a", DType.F32, [1]), new("b", DType.F32, [1])]))
        {
            Assert.Throws<InvalidOperationException>(() => w.AppendSingles("b", [1f])); // out of order
            Assert.Throws<InvalidOperationException>(() => w.AppendSingles("a", [1f, 2f])); // too many
        }
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path));
    }

    [Fact]
    public void FileAndTensorLargerThan2GiB_AreReadWithoutLoading()
    {
        using var dir = new TempDir();
        var path = dir.File("big.safetensors");
        const long size = 3L << 30; // 3 GiB of U8, written sparse
        var layout = new List<TensorInfo> { new("small", DType.F32, [2], 0, 8), new("huge", DType.U8, [size], 8, 8 + size) };
        var header = SafetensorsWriter.BuildHeader(layout, null);
        using (var fs = new FileStream(path, FileMode.CreateNew))
        {
            fs.Write(BitConverter.GetBytes((ulong)header.Length));
            fs.Write(header);
            fs.Write(BitConverter.GetBytes(1.5f));
            fs.Write(BitConverter.GetBytes(-2.5f));
            fs.SetLength(8 + header.Length + 8 + size);
            fs.Position = 8 + header.Length + 8 + size - 4;
            fs.Write([1, 2, 3, 4]);
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        using var f = SafetensorsFile.Open(path);
        var huge = f.Get("huge");
        Assert.Equal(size, huge.ByteLength);
        var tail = new byte[4];
        f.ReadBytes(huge, size - 4, tail);
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, tail);
        var mid = new byte[16];
        f.ReadBytes(huge, (5L << 29) + 3, mid); // 2.5 GiB in
        Assert.All(mid, b => Assert.Equal(0, b));
        Assert.Equal([1.5f, -2.5f], f.ReadSingles(f.Get("small")));
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20);
    }

    [Fact]
    public void FilePastTheWritebackChunk_IsWrittenWhole()
    {
        // Every 32 MiB the writer flushes and asks the kernel to start writing back (sync_file_range);
        // the bytes, their order and the tensors around the chunk boundaries must not change.
        using var dir = new TempDir();
        var path = dir.File("w.safetensors");
        const int n = (40 << 20) / 4 + 5;
        var rng = new Random(3);
        var bytes = new byte[4L * n];
        rng.NextBytes(bytes);
        using (var w = new SafetensorsWriter(path, [new("a", DType.F32, [n]), new("b", DType.U8, [7])]))
        {
            for (int done = 0; done < bytes.Length; done += 3_000_001)
                w.Append("a", bytes.AsSpan(done, Math.Min(3_000_001, bytes.Length - done)));
            w.Append("b", [1, 2, 3, 4, 5, 6, 7]);
            w.Commit();
        }
        using var f = SafetensorsFile.Open(path);
        var back = new byte[bytes.Length];
        f.ReadBytes(f.Get("a"), 0, back);
        Assert.True(bytes.AsSpan().SequenceEqual(back));
        var tail = new byte[7];
        f.ReadBytes(f.Get("b"), 0, tail);
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5, 6, 7 }, tail);
    }

    [Fact]
    public void DTypeNames_AreTheMemberNames_AndParseBack()
    {
        foreach (var d in Enum.GetValues<DType>())
        {
            Assert.Equal(d.ToString(), d.Name());
            Assert.True(DTypes.TryParse(d.Name(), out var back));
            Assert.Equal(d, back);
        }
        Assert.False(DTypes.TryParse("bf16", out _));
        Assert.False(DTypes.TryParse("F32 ", out _));
        Assert.False(DTypes.TryParse("", out _));
    }
}
