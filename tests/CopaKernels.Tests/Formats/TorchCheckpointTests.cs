using System.Buffers.Binary;
using System.Runtime.InteropServices;
using CopaKernels.Formats;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Formats.Torch;

namespace CopaKernels.Tests.Formats;

/// <summary>
/// The torch.save zip reader: real checkpoints written by torch 1.13 and 2.6 (Fixtures/torch, see
/// make_fixtures.py) read bit for bit as their safetensors twin; hand-made pickles that try to run
/// code, blow up or lie about sizes; and zips that are truncated, inconsistent or hostile. Every
/// refusal is a <see cref="TorchCheckpointException"/> naming the file.
/// </summary>
public class TorchCheckpointTests
{
    // ---------------------------------------------------------------- helpers

    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "torch", name);

    /// <summary>Element i of the fixture tensor numbered n (make_fixtures.py's formula).</summary>
    private static float Value(int n, long i) => ((i * 37 + n * 11) % 251 - 125) / 64f;

    private static float[] Values(int n, int count, int from = 0) => Enumerable.Range(from, count).Select(i => Value(n, i)).ToArray();

    private static byte[] F32(params float[] v) => MemoryMarshal.AsBytes(v.AsSpan()).ToArray();

    private const string Lora = "base_model.model.model.layers.0.";

    /// <summary>The fixture state dict's names, in the order it was built.</summary>
    private static readonly string[] FixtureNames =
    [
        Lora + "self_attn.q_proj.lora_A.weight", Lora + "self_attn.q_proj.lora_B.weight",
        Lora + "self_attn.v_proj.lora_A.weight", Lora + "self_attn.v_proj.lora_B.weight",
        Lora + "mlp.up_proj.lora_A.weight", Lora + "mlp.up_proj.lora_B.weight",
        "shared.whole", "shared.rows", "shared.tail", "tied.embed", "tied.head",
        "other.f64", "other.i64", "other.i32", "other.i16", "other.i8", "other.u8", "other.bool", "other.scalar", "other.empty",
    ];

    public static TheoryData<string> Checkpoints => ["torch-1.13.bin", "torch-1.13-protocol4.bin", "torch-2.6.bin", "torch-2.6-protocol4.bin"];

    /// <summary>Writes <paramref name="bytes"/> to a file and opens it.</summary>
    private static TorchCheckpoint OpenBytes(TempDir dir, byte[] bytes)
    {
        var path = dir.File("case.bin");
        File.WriteAllBytes(path, bytes);
        return TorchCheckpoint.Open(path);
    }

    /// <summary>Asserts that opening <paramref name="bytes"/> is refused with one line naming the file (and the tensor), containing each fragment.</summary>
    private static TorchCheckpointException Refused(byte[] bytes, string? tensor, params string[] fragments)
    {
        using var dir = new TempDir();
        var path = dir.File("case.bin");
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<TorchCheckpointException>(() => { using var c = TorchCheckpoint.Open(path); });
        AssertMessage(e, path, tensor, fragments);
        return e;
    }

    private static void AssertMessage(TorchCheckpointException e, string path, string? tensor, string[] fragments)
    {
        Assert.Equal(path, e.FilePath);
        Assert.True(tensor == e.Tensor, $"expected tensor {tensor ?? "<null>"}, got {e.Tensor ?? "<null>"} ({e.Message})");
        Assert.StartsWith(tensor == null ? $"{path}: " : $"{path}: {tensor}: ", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        foreach (var f in fragments) Assert.True(e.Message.Contains(f, StringComparison.Ordinal), $"\"{f}\" not in: {e.Message}");
    }

    /// <summary>Asserts that the pickle alone is refused, with the fragments in the message.</summary>
    private static TorchCheckpointException PickleRefused(byte[] pickle, string? tensor, params string[] fragments)
    {
        var e = Assert.Throws<TorchCheckpointException>(() => StateDictUnpickler.Parse(pickle, "archive/data.pkl", "/x/case.bin"));
        AssertMessage(e, "/x/case.bin", tensor, fragments);
        return e;
    }

    /// <summary>A checkpoint of one F32 tensor "w" of shape [2, 2] viewing storage "0" of 4 elements.</summary>
    private static byte[] OneTensor(string key = "0") => Zip.Checkpoint(
        Pickle.StateDict(("w", p => p.Tensor(key, "FloatStorage", 4, 0, [2, 2]))), ("0", F32(1, 2, 3, 4)));

    // ---------------------------------------------------------------- real checkpoints

    [Theory, MemberData(nameof(Checkpoints))]
    public void RealCheckpoint_EveryTensorHasTheBytesOfTheSafetensorsFile(string name)
    {
        using var c = TorchCheckpoint.Open(Fixture(name));
        using var st = SafetensorsFile.Open(Fixture("reference.safetensors"));
        Assert.Equal(FixtureNames, c.Tensors.Select(t => t.Name));
        Assert.Equal(Path.GetFileNameWithoutExtension(name), c.ArchiveName);
        foreach (var t in c.Tensors)
        {
            Assert.True(st.TryGet(t.Name, out var s), t.Name);
            Assert.Equal(s.DType, t.DType);
            Assert.Equal(s.Shape, t.Shape);
            Assert.Equal(s.ByteLength, t.ByteLength);
            var mine = new byte[t.ByteLength];
            var theirs = new byte[s.ByteLength];
            c.ReadBytes(t, 0, mine);
            st.ReadBytes(s, 0, theirs);
            Assert.True(mine.AsSpan().SequenceEqual(theirs), $"{name}: {t.Name} differs");
        }
    }

    [Theory, MemberData(nameof(Checkpoints))]
    public void RealCheckpoint_ViewsOfOneStorage_ReadInPlace(string name)
    {
        using var c = TorchCheckpoint.Open(Fixture(name));
        ITensorFile f = c;
        Assert.True(f.TryGet("shared.whole", out var whole));
        Assert.True(f.TryGet("shared.rows", out var rows));
        Assert.True(f.TryGet("shared.tail", out var tail));
        Assert.Equal(whole.Begin + 16 * 4, rows.Begin);
        Assert.Equal(whole.Begin + 40 * 4, tail.Begin);
        Assert.Equal<long>([3, 8], rows.Shape);
        Assert.Equal(Values(6, 24, from: 16), f.ReadSingles(rows));
        Assert.Equal(Values(6, 8, from: 40), f.ReadSingles(tail));
        // Tied weights: one tensor object under two names, so one byte range.
        Assert.True(f.TryGet("tied.embed", out var embed));
        Assert.True(f.TryGet("tied.head", out var head));
        Assert.Equal((embed.Begin, embed.End), (head.Begin, head.End));
        Assert.False(f.TryGet("missing", out _));
    }

    [Theory, MemberData(nameof(Checkpoints))]
    public void RealCheckpoint_ValuesAreTheGeneratorsFormula(string name)
    {
        using var c = TorchCheckpoint.Open(Fixture(name));
        var byName = c.Tensors.ToDictionary(t => t.Name);
        (string Name, int N, DType DType)[] floats =
        [
            (Lora + "self_attn.q_proj.lora_A.weight", 0, DType.BF16), (Lora + "self_attn.q_proj.lora_B.weight", 1, DType.BF16),
            (Lora + "self_attn.v_proj.lora_A.weight", 2, DType.F16), (Lora + "self_attn.v_proj.lora_B.weight", 3, DType.F16),
            (Lora + "mlp.up_proj.lora_A.weight", 4, DType.F32), (Lora + "mlp.up_proj.lora_B.weight", 5, DType.F32),
            ("shared.whole", 6, DType.F32), ("tied.embed", 7, DType.BF16), ("other.f64", 8, DType.F64),
        ];
        foreach (var (n, k, dtype) in floats)
        {
            var t = byName[n];
            Assert.Equal(dtype, t.DType);
            Assert.Equal(Values(k, (int)t.ElementCount), c.ReadSingles(t));
            // A read from the middle, as a merge reads a slice.
            var part = new float[t.ElementCount - 2];
            c.ReadSingles(t, 2, part);
            Assert.Equal(Values(k, part.Length, from: 2), part);
        }
        Assert.Equal<long>([4, 16], byName[Lora + "self_attn.q_proj.lora_A.weight"].Shape);
        Assert.Equal<long>([24, 4], byName[Lora + "self_attn.v_proj.lora_B.weight"].Shape);
        Assert.Equal([0.5f], c.ReadSingles(byName["other.scalar"]));
        Assert.Empty(byName["other.scalar"].Shape);
        Assert.Equal(0, byName["other.empty"].ByteLength);
        Assert.Equal<long>([0, 4], byName["other.empty"].Shape);

        var ints = new (string, DType, long[])[]
        {
            ("other.i64", DType.I64, [-2, -1, 0, 1, 2]), ("other.i32", DType.I32, [-2, -1, 0, 1, 2]),
            ("other.i16", DType.I16, [-2, -1, 0, 1, 2]), ("other.i8", DType.I8, [-2, -1, 0, 1, 2]),
            ("other.u8", DType.U8, [250, 251, 252, 253, 254]), ("other.bool", DType.BOOL, [1, 0, 1, 1, 0]),
        };
        foreach (var (n, dtype, expected) in ints)
        {
            var t = byName[n];
            Assert.Equal(dtype, t.DType);
            var b = new byte[t.ByteLength];
            c.ReadBytes(t, 0, b);
            int size = dtype.Bits() / 8;
            var got = Enumerable.Range(0, 5).Select(i => size switch
            {
                8 => BinaryPrimitives.ReadInt64LittleEndian(b.AsSpan(i * 8)),
                4 => BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(i * 4)),
                2 => BinaryPrimitives.ReadInt16LittleEndian(b.AsSpan(i * 2)),
                _ => dtype == DType.I8 ? (sbyte)b[i] : b[i],
            });
            Assert.Equal(expected, got);
        }
        var e = Assert.Throws<TorchCheckpointException>(() => c.ReadSingles(byName["other.i64"]));
        Assert.Equal("other.i64", e.Tensor);
        Assert.Contains("not a float type", e.Message);
    }

    [Theory]
    [InlineData("module-1.13.bin")]
    [InlineData("module-2.6.bin")]
    public void ModuleStateDict_WithItsMetadataAttribute_Opens(string name)
    {
        // module.state_dict() is an OrderedDict whose _metadata attribute is pickled with BUILD.
        using var c = TorchCheckpoint.Open(Fixture(name));
        Assert.Equal(["weight", "bias"], c.Tensors.Select(t => t.Name));
        Assert.Equal(Values(9, 12), c.ReadSingles(c.Tensors[0]));
        Assert.Equal(Values(10, 3), c.ReadSingles(c.Tensors[1]));
    }

    [Theory]
    [InlineData("noncontiguous-1.13.bin")]
    [InlineData("noncontiguous-2.6.bin")]
    public void NonContiguousTensor_IsRefusedWithItsStrides(string name)
    {
        var path = Fixture(name);
        var e = Assert.Throws<TorchCheckpointException>(() => TorchCheckpoint.Open(path));
        AssertMessage(e, path, "w", ["non-contiguous (shape [6, 4], strides (1, 6)): save it with .contiguous()"]);
    }

    [Theory]
    [InlineData("legacy-1.13.pt")]
    [InlineData("legacy-2.6.pt")]
    public void LegacyFormat_IsRefusedWithHowToConvert(string name)
    {
        var path = Fixture(name);
        var e = Assert.Throws<TorchCheckpointException>(() => TorchCheckpoint.Open(path));
        AssertMessage(e, path, null, ["legacy (pre-1.6) format", "torch.save(state_dict, path)", "safetensors.torch.save_file(state_dict, path)"]);
    }

    [Fact]
    public void CopyTo_WritesTheTensorsBytes()
    {
        using var c = TorchCheckpoint.Open(Fixture("torch-2.6.bin"));
        foreach (var t in c.Tensors)
        {
            var ms = new MemoryStream();
            c.CopyTo(t, ms);
            var b = new byte[t.ByteLength];
            c.ReadBytes(t, 0, b);
            Assert.Equal(b, ms.ToArray());
        }
        var w = c.Tensors[0];
        Assert.Throws<ArgumentOutOfRangeException>(() => c.ReadBytes(w, w.ByteLength - 1, new byte[2]));
    }

    [Fact]
    public void TensorBytes_AreReadWhenAsked_AndACheckSeesTheFileChange()
    {
        using var dir = new TempDir();
        var path = dir.File("adapter_model.bin");
        File.Copy(Fixture("torch-2.6.bin"), path);
        using var c = TorchCheckpoint.Open(path);
        c.CheckUnchanged();
        var t = c.Tensors.Single(t => t.Name == "shared.whole");
        // Rewrite the tensor's bytes in place after Open: the next read sees them, so Open did not read them.
        using (var f = new FileStream(path, FileMode.Open, FileAccess.Write))
        {
            f.Position = t.Begin;
            f.Write(F32(42f));
        }
        Assert.Equal(42f, c.ReadSingles(t)[0]);
        var e = Assert.Throws<TorchCheckpointException>(c.CheckUnchanged);
        Assert.Equal(path, e.FilePath);
        Assert.Contains("input changed", e.Message);
    }

    [Fact]
    public void CheckUnchanged_SeesTheFileReplaced()
    {
        using var dir = new TempDir();
        var path = dir.File("a.bin");
        File.Copy(Fixture("module-2.6.bin"), path);
        using var c = TorchCheckpoint.Open(path);
        File.Delete(path);
        File.Copy(Fixture("module-1.13.bin"), path);
        var e = Assert.Throws<TorchCheckpointException>(c.CheckUnchanged);
        Assert.Contains("input changed", e.Message);
    }

    // ---------------------------------------------------------------- the pickle: nothing runs

    [Theory]
    [InlineData("os", "system")]
    [InlineData("posix", "system")]
    [InlineData("nt", "system")]
    [InlineData("builtins", "eval")]
    [InlineData("builtins", "exec")]
    [InlineData("__builtin__", "eval")]
    [InlineData("builtins", "getattr")]
    [InlineData("subprocess", "Popen")]
    [InlineData("subprocess", "check_output")]
    [InlineData("torch", "load")]
    [InlineData("torch._utils", "_rebuild_tensor")]
    [InlineData("torch.storage", "UntypedStorage")]
    [InlineData("torch", "device")]
    [InlineData("collections", "defaultdict")]
    public void Global_OffTheList_IsRefused_WithGlobalAndStackGlobal(string module, string name)
    {
        using var dir = new TempDir();
        var marker = dir.File("pwned");
        // What Python's pickle would run: module.name("touch marker"), through GLOBAL (protocol 2) and STACK_GLOBAL (protocol 4).
        var viaGlobal = new Pickle().Proto().Global(module, name).Str($"touch {marker}").Tuple1().Reduce().Stop().Bytes;
        var viaStack = new Pickle().Proto(4).Str(module).Str(name).Op(0x93).Str($"touch {marker}").Tuple1().Reduce().Stop().Bytes;
        foreach (var pickle in (byte[][])[viaGlobal, viaStack])
        {
            Refused(Zip.Checkpoint(pickle), null, $"archive/data.pkl at byte ", $"global {module}.{name} is not allowed");
            PickleRefused(pickle, null, $"global {module}.{name} is not allowed");
        }
        Assert.False(File.Exists(marker));
    }

    [Fact]
    public void Global_AsADictValue_IsRefusedAtTheGlobal()
    {
        var pickle = Pickle.StateDict(("w", p => p.Global("os", "system")));
        PickleRefused(pickle, null, "at byte 10: global os.system is not allowed");
    }

    [Theory]
    [InlineData(0x69, "INST")]
    [InlineData(0x6f, "OBJ")]
    [InlineData(0x81, "NEWOBJ")]
    [InlineData(0x92, "NEWOBJ_EX")]
    [InlineData(0x82, "EXT1")]
    [InlineData(0x50, "PERSID")]
    [InlineData(0x53, "STRING")]
    [InlineData(0x42, "BINBYTES")]
    [InlineData(0x67, "GET")]
    [InlineData(0x32, "DUP")]
    [InlineData(0x8f, "EMPTY_SET")]
    [InlineData(0x8b, "LONG4")]
    [InlineData(0x97, "NEXT_BUFFER")]
    [InlineData(0xff, "not a pickle opcode")]
    public void Opcode_OffTheList_IsRefusedByName(int op, string name)
    {
        // INST and OBJ are how protocol 0 and 1 call a class: "i os\nsystem\n" would run os.system.
        var pickle = new Pickle().Proto().Mark().Str("echo hi").Op((byte)op).Op("os\nsystem\n"u8.ToArray()).Stop().Bytes;
        PickleRefused(pickle, null, $"at byte 15: opcode 0x{op:x2} ({name}) is not allowed in a state dict pickle");
    }

    [Fact]
    public void Reduce_OfAnythingButTheAllowedFunctions_IsRefused()
    {
        PickleRefused(new Pickle().Proto().Global("torch", "FloatStorage").Int(4).Tuple1().Reduce().Stop().Bytes, null,
            "torch.FloatStorage cannot be called with (4)");
        PickleRefused(new Pickle().Proto().Str("os.system").Str("ls").Tuple1().Reduce().Stop().Bytes, null, "REDUCE of a str");
        PickleRefused(new Pickle().Proto().Global("collections", "OrderedDict").EmptyList().Tuple1().Reduce().Stop().Bytes, null,
            "collections.OrderedDict cannot be called with");
        PickleRefused(new Pickle().Proto().Global("torch._utils", "_rebuild_tensor_v2").Str("storage").Int(0).Tuple2().Reduce().Stop().Bytes, null,
            "torch._utils._rebuild_tensor_v2 cannot be called with ('storage', 0)");
        PickleRefused(new Pickle().Proto().Global("torch._utils", "_rebuild_parameter").Int(1).Reduce().Stop().Bytes, null,
            "REDUCE of torch._utils._rebuild_parameter with an int for arguments");
        PickleRefused(new Pickle().Proto().EmptyList().EmptyDict().Build().Stop().Bytes, null, "BUILD of a list");
    }

    [Fact]
    public void PersistentId_MustBeAStorageOfAKnownType()
    {
        PickleRefused(new Pickle().Proto().Str("storage").Str("torch.FloatStorage").Str("0").Str("cpu").Int(4).Op('t').PersId().Stop().Bytes, null,
            "no mark to pop to");
        PickleRefused(new Pickle().Proto().Mark().Str("storage").Str("FloatStorage").Str("0").Str("cpu").Int(4).Tuple().PersId().Stop().Bytes, null,
            "persistent id ('storage', 'FloatStorage', '0', 'cpu', 4) is not ('storage', storage type, key, location, numel)");
        PickleRefused(new Pickle().Proto().Mark().Str("storage").Global("torch", "QInt8Storage").Stop().Bytes, null,
            "storage type torch.QInt8Storage is not supported");
        PickleRefused(Pickle.StateDict(
            ("a", p => p.Tensor("0", "FloatStorage", 4, 0, [4])),
            ("b", p => p.Tensor("0", "HalfStorage", 8, 0, [4]))), null,
            "storage 0 is declared twice, as torch.FloatStorage of 4 and torch.HalfStorage of 8 elements");
    }

    [Fact]
    public void DeepNesting_IsBounded()
    {
        var tuples = new Pickle().Proto().EmptyTuple();
        for (int i = 0; i < 1000; i++) tuples.Tuple1();
        PickleRefused(tuples.Stop().Bytes, null, $"nested more than {StateDictUnpickler.MaxDepth} deep");

        var lists = new Pickle().Proto();
        for (int i = 0; i < 1000; i++) lists.EmptyList();
        for (int i = 0; i < 999; i++) lists.Append();
        PickleRefused(lists.Stop().Bytes, null, $"nested more than {StateDictUnpickler.MaxDepth} deep");

        var dicts = new Pickle().Proto();
        for (int i = 0; i < 999; i++) dicts.EmptyDict().Str("k");
        dicts.EmptyDict();
        for (int i = 0; i < 999; i++) dicts.SetItem();
        PickleRefused(dicts.Stop().Bytes, null, $"nested more than {StateDictUnpickler.MaxDepth} deep");

        var marks = new Pickle().Proto();
        for (int i = 0; i < 1000; i++) marks.Mark();
        PickleRefused(marks.Stop().Bytes, null, $"more than {StateDictUnpickler.MaxDepth} nested marks");
    }

    [Fact]
    public void MemoBomb_IsNeverExpanded()
    {
        // t(i) = (t(i-1), t(i-1)), the second a memo reference: 2^30 leaves as a tree, 31 tuples as read.
        var p = new Pickle().Proto().EmptyDict().Str("x").EmptyTuple().Put(0);
        for (int i = 1; i <= 30; i++) p.Get(i - 1).Tuple2().Put(i);
        var e = PickleRefused(p.SetItem().Stop().Bytes, "x", "holds a tuple, not a tensor");
        Assert.Null(e.InnerException);
    }

    [Fact]
    public void ObjectCount_IsBounded()
    {
        // A list filled with a memo reference over and over: each BINGET costs 2 bytes and one object.
        int n = StateDictUnpickler.MaxObjects + 1;
        var b = new byte[6 + 2 * n + 2];
        new byte[] { 0x80, 2, (byte)']', (byte)'q', 0, (byte)'(' }.CopyTo(b, 0);
        for (int i = 0; i < n; i++) { b[6 + 2 * i] = (byte)'h'; b[7 + 2 * i] = 0; }
        b[^2] = (byte)'e';
        b[^1] = (byte)'.';
        PickleRefused(b, null, $"more than {StateDictUnpickler.MaxObjects:N0} objects");
    }

    [Fact]
    public void Containers_CannotBeChangedOnceNested_SoNoCycles()
    {
        PickleRefused(new Pickle().Proto().EmptyList().Put(0).Get(0).Append().Stop().Bytes, null, "(or into itself)");
        // a = [], b = [], a.append(b), b.append(a)
        PickleRefused(new Pickle().Proto().EmptyList().Put(0).EmptyList().Put(1).Append().Get(1).Get(0).Append().Stop().Bytes, null,
            "changed after being placed in another container");
        PickleRefused(new Pickle().Proto().EmptyDict().Put(0).Get(0).Tuple1().Get(0).Str("k").Int(1).SetItem().Stop().Bytes, null,
            "changed after being placed");
    }

    [Fact]
    public void MalformedPickles_AreRefused()
    {
        PickleRefused(new Pickle().Proto().Op('X', 0xff, 0xff, 0xff, 0xff).Op("abc"u8.ToArray()).Stop().Bytes, null, "truncated");
        PickleRefused(new Pickle().Proto().Op(0x8a, 9).Op(new byte[9]).Stop().Bytes, null, "a 9-byte integer is out of range");
        PickleRefused(new Pickle().Proto(6).EmptyDict().Stop().Bytes, null, "pickle protocol 6 is unknown");
        PickleRefused(new Pickle().Proto().EmptyDict().Stop().Op('N').Bytes, null, "1 bytes after STOP");
        PickleRefused(new Pickle().Proto().EmptyDict().EmptyDict().Stop().Bytes, null, "values left on the stack");
        PickleRefused(new Pickle().Proto().Get(7).Stop().Bytes, null, "memo index 7 was never set");
        PickleRefused(new Pickle().Proto().Stop().Bytes, null, "stack underflow");
        PickleRefused(new Pickle().Proto().Op('X', 2, 0, 0, 0, 0xc3, 0x28).Stop().Bytes, null, "not valid UTF-8");
        PickleRefused(new Pickle().Proto().Op('c').Op(new byte[300]).Stop().Bytes, null, "GLOBAL name is not a line");
        PickleRefused(new Pickle().Proto().EmptyList().Stop().Bytes, null, "the pickle holds a list, not a dict of tensors");
        // Every cut of a real state dict pickle is refused, never read as something shorter.
        var whole = Pickle.StateDict(("w", p => p.Tensor("0", "FloatStorage", 4, 0, [2, 2])));
        for (int cut = 0; cut < whole.Length; cut++)
            Assert.Throws<TorchCheckpointException>(() => StateDictUnpickler.Parse(whole[..cut], "archive/data.pkl", "x"));
        Assert.Single(StateDictUnpickler.Parse(whole, "archive/data.pkl", "x"));
    }

    [Fact]
    public void StateDict_MustBeFlat_NameToTensor()
    {
        var tensor = (Action<Pickle>)(p => p.Tensor("0", "FloatStorage", 4, 0, [4]));
        PickleRefused(Pickle.StateDict(("w", tensor), ("epoch", p => p.Int(3))), "epoch", "holds an int, not a tensor");
        PickleRefused(Pickle.StateDict(("w", tensor), ("note", p => p.Str("hi"))), "note", "holds a str, not a tensor");
        PickleRefused(Pickle.StateDict(("state_dict", p => { p.EmptyDict().Str("w"); tensor(p); p.SetItem(); })), "state_dict",
            "holds a dict, not a tensor: this reader takes a flat state dict (name → tensor); save the inner dict itself");
        var intKey = new Pickle().Proto().EmptyDict().Int(1);
        tensor(intKey);
        PickleRefused(intKey.SetItem().Stop().Bytes, null, "a key of the state dict is an int");
        PickleRefused(Pickle.StateDict(("w", tensor), ("w", tensor)), null, "dict key 'w' is set twice");
    }

    // ---------------------------------------------------------------- tensors against their storages

    [Fact]
    public void Tensor_ShapesStridesAndOffsets_AreChecked()
    {
        byte[] One(long numel, long offset, long[] size, long[]? stride = null, int bytes = 16) => Zip.Checkpoint(
            Pickle.StateDict(("w", p => p.Tensor("0", "FloatStorage", numel, offset, size, stride))), ("0", new byte[bytes]));

        Refused(One(4, 0, [1L << 40, 1L << 40]), "w", "shape [1099511627776, 1099511627776] overflows");
        Refused(One(4, 0, [1L << 62]), "w", "shape [4611686018427387904] overflows");
        Refused(One(4, 0, [1L << 40]), "w", "elements [0, 0 + 1099511627776) lie outside its storage 0 of 4 elements");
        Refused(One(4, 3, [2]), "w", "outside its storage 0 of 4 elements");
        Refused(One(4, long.MaxValue, [2]), "w", "outside its storage");
        Refused(One(1L << 61, 0, [4]), "w", "storage 0 (torch.FloatStorage) declares 2305843009213693952 elements, but its entry archive/data/0 holds 16 bytes");
        Refused(One(5, 0, [4]), "w", "declares 5 elements, but its entry archive/data/0 holds 16 bytes");
        Refused(One(4, 0, [-1, 4]), "w", "negative size or stride");
        Refused(One(4, 0, [2, 2], [1, 2]), "w", "non-contiguous (shape [2, 2], strides (1, 2)): save it with .contiguous()");
        Refused(One(4, 0, [2], [2]), "w", "non-contiguous (shape [2], strides (2))");
        // torch calls a size-1 dimension contiguous whatever its stride.
        using var dir = new TempDir();
        using var c = OpenBytes(dir, One(4, 0, [1, 4], [99, 1]));
        Assert.Equal<long>([1, 4], c.Tensors[0].Shape);
    }

    [Fact]
    public void Storage_MustBeAStoredEntryOfTheArchive()
    {
        Refused(Zip.Checkpoint(Pickle.StateDict(("w", p => p.Tensor("7", "FloatStorage", 4, 0, [4])))), "w",
            "its storage 7 has no entry archive/data/7");
        var pickle = Pickle.StateDict(("w", p => p.Tensor("0", "FloatStorage", 4, 0, [4])));
        Refused(Zip.Bytes([new("archive/data.pkl", pickle), new("archive/data/0", F32(1, 2, 3, 4), Deflate: true)]), "w",
            "storage entry archive/data/0 is compressed; torch.save writes storages uncompressed (stored), so save the state dict again with torch.save");
        // The pickle itself may be deflated (an archive repacked by a zip tool): it is small and read whole.
        using var dir = new TempDir();
        using var c = OpenBytes(dir, Zip.Bytes([new("archive/data.pkl", pickle, Deflate: true), new("archive/data/0", F32(1, 2, 3, 4))]));
        Assert.Equal([1f, 2, 3, 4], c.ReadSingles(c.Tensors[0]));
    }

    // ---------------------------------------------------------------- the zip container

    [Fact]
    public void NotAZipCheckpoint_IsRefusedWithWhatItIs()
    {
        Refused([], null, "not a PyTorch zip checkpoint");
        Refused("hello, world"u8.ToArray(), null, "not a PyTorch zip checkpoint (no zip signature at the start)");
        Refused(StBytes.Make("{}", 0), null, "not a PyTorch zip checkpoint");
        Refused(Zip.Bytes([]), null, "not a PyTorch zip checkpoint");
        Refused(new Pickle().Proto(3).EmptyDict().Stop().Bytes, null, "a bare pickle, not a torch.save zip checkpoint", "torch.save(state_dict, path)");
        Refused([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e], null, "legacy (pre-1.6) format");
        using var dir = new TempDir();
        var missing = dir.File("none.bin");
        var e = Assert.Throws<TorchCheckpointException>(() => TorchCheckpoint.Open(missing));
        Assert.Equal($"{missing}: file not found", e.Message);
    }

    [Fact]
    public void EveryTruncation_IsRefused()
    {
        var whole = File.ReadAllBytes(Fixture("module-2.6.bin"));
        using var dir = new TempDir();
        var path = dir.File("cut.bin");
        for (int cut = 0; cut < whole.Length; cut++)
        {
            File.WriteAllBytes(path, whole[..cut]);
            Assert.Throws<TorchCheckpointException>(() => { using var c = TorchCheckpoint.Open(path); });
        }
    }

    [Fact]
    public void CorruptBytes_GiveOnlyTheReadersException()
    {
        // One byte changed anywhere: the file opens (a tensor byte, a timestamp) or is refused, never another exception.
        var whole = File.ReadAllBytes(Fixture("torch-2.6.bin"));
        using var dir = new TempDir();
        var path = dir.File("flip.bin");
        var random = new Random(1234);
        int opened = 0, refused = 0;
        for (int i = 0; i < 1500; i++)
        {
            var b = (byte[])whole.Clone();
            int at = random.Next(b.Length);
            b[at] ^= (byte)(1 << random.Next(8));
            File.WriteAllBytes(path, b);
            try
            {
                using var c = TorchCheckpoint.Open(path);
                foreach (var t in c.Tensors) c.ReadBytes(t, 0, new byte[t.ByteLength]);
                opened++;
            }
            catch (TorchCheckpointException) { refused++; }
        }
        Assert.True(opened > 0 && refused > 0, $"{opened} opened, {refused} refused");
    }

    [Fact]
    public void CentralDirectory_Inconsistent_IsRefused()
    {
        var good = OneTensor();
        int end = Zip.End(good), cd = Zip.Central(good, "archive/data.pkl");

        var b = (byte[])good.Clone();
        b[cd] = (byte)'X';
        Refused(b, null, "central directory record 0 is corrupt");

        b = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(end + 16), (uint)cd + 1);
        Refused(b, null, "does not end where the end record begins");

        b = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(end + 8), 200);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(end + 10), 200);
        Refused(b, null, "200 entries cannot fit");

        b = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(end + 8), 2);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(end + 10), 2);
        Refused(b, null, "bytes after its 2 records");

        b = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(end + 4), 1);
        Refused(b, null, "multi-disk (split) zip archives are not supported");

        b = (byte[])good.Clone();
        b[^1] = 1; // a comment length that no longer reaches the end
        Refused(b, null, "no zip end-of-central-directory record");

        // Local header and directory disagree: sizes, method, name.
        b = (byte[])good.Clone();
        b[30 + "archive/data.pkl".Length + 3] ^= 1; // a byte of the pickle
        Refused(b, null, "entry archive/data.pkl fails its CRC-32 check");

        b = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(22), 5);
        Refused(b, null, "entry archive/data.pkl: local header's CRC or sizes disagree with the central directory");

        b = (byte[])good.Clone();
        b[30] = (byte)'A';
        Refused(b, null, "entry archive/data.pkl: local header names another file");

        b = (byte[])good.Clone();
        int dataEntry = Zip.Central(good, "archive/data/0");
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(dataEntry + 20), 1u << 30);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(dataEntry + 24), 1u << 30);
        Refused(b, null, "entry archive/data/0: local header's CRC or sizes disagree");

        b = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(dataEntry + 42), (uint)cd);
        Refused(b, null, "entry archive/data/0: local header offset");
    }

    [Fact]
    public void EntryPastTheData_IsRefused()
    {
        // Sizes that agree in both headers (data descriptor flag: the local ones are zero) but reach into the directory.
        var pickle = Pickle.StateDict(("w", p => p.Tensor("0", "FloatStorage", 4, 0, [4])));
        var b = Zip.Bytes([new("archive/data.pkl", pickle), new("archive/data/0", F32(1, 2, 3, 4), Flags: 8)]);
        int cd = Zip.Central(b, "archive/data/0");
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(cd + 20), 1000);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(cd + 24), 1000);
        Refused(b, null, "entry archive/data/0: its 1000 bytes run past the start of the central directory");
    }

    [Fact]
    public void OverlappingEntries_AreRefused()
    {
        // Entry B's local header and data lie inside entry A's data: both read back as valid, but share bytes.
        var pickle = Pickle.StateDict(("w", p => p.Tensor("0", "FloatStorage", 4, 0, [4])));
        var storage = new ZEntry("archive/data/0", F32(1, 2, 3, 4));
        var inner = Zip.Local(storage);
        var outer = new ZEntry("archive/data/1", inner);
        var b = Zip.Bytes([outer, storage with { Hidden = true, HeaderOffset = 30 + outer.Name.Length }, new("archive/data.pkl", pickle)]);
        Refused(b, null, "entries archive/data/1 and archive/data/0 overlap");
    }

    [Theory]
    [InlineData("archive/../data.pkl")]
    [InlineData("archive/data/../../etc/passwd")]
    [InlineData("/archive/data.pkl")]
    [InlineData("archive\\data.pkl")]
    [InlineData("archive/./data.pkl")]
    [InlineData("archive//data.pkl")]
    [InlineData("C:/archive/data.pkl")]
    [InlineData("..")]
    [InlineData("archive/data\u0001.pkl")]
    public void EntryNames_ThatAreNotPlainRelativePaths_AreRefused(string name)
    {
        var pickle = Pickle.StateDict();
        Refused(Zip.Bytes([new("archive/data.pkl", pickle), new(name, [1])]), null, "is not a plain relative path");
    }

    [Fact]
    public void Entries_MustBeUniqueAndInOneFolder_AndInTheClear()
    {
        var pickle = Pickle.StateDict(("w", p => p.Tensor("0", "FloatStorage", 4, 0, [4])));
        ZEntry pkl = new("archive/data.pkl", pickle), data = new("archive/data/0", F32(1, 2, 3, 4));
        Refused(Zip.Bytes([pkl, data, data]), null, "entry archive/data/0 appears twice");
        Refused(Zip.Bytes([pkl, data, new("other/version", [])]), null, "entry other/version is outside the archive's folder archive/");
        Refused(Zip.Bytes([new("data.pkl", pickle), data]), null, "entry data.pkl is not in a folder");
        Refused(Zip.Bytes([pkl, data with { Flags = 1 }]), null, "entry archive/data/0 is encrypted");
        Refused(Zip.Bytes([data]), null, "no archive/data.pkl: not a torch.save checkpoint");
        // Any folder name is the archive's; a folder entry is allowed.
        using var dir = new TempDir();
        using var c = OpenBytes(dir, Zip.Bytes([new("adapter_model/", []), pkl with { Name = "adapter_model/data.pkl" }, data with { Name = "adapter_model/data/0" }]));
        Assert.Equal("adapter_model", c.ArchiveName);
        Assert.Equal([1f, 2, 3, 4], c.ReadSingles(c.Tensors[0]));
    }

    [Fact]
    public void ByteOrder_BigIsRefused_LittleIsRead()
    {
        var pickle = Pickle.StateDict(("w", p => p.Tensor("0", "FloatStorage", 4, 0, [4])));
        ZEntry pkl = new("archive/data.pkl", pickle), data = new("archive/data/0", F32(1, 2, 3, 4));
        Refused(Zip.Bytes([pkl, new("archive/byteorder", "big"u8.ToArray()), data]), null, "a big-endian checkpoint (byteorder \"big\")");
        Refused(Zip.Bytes([pkl, new("archive/byteorder", "middle"u8.ToArray()), data]), null, "unknown byteorder \"middle\"");
        using var dir = new TempDir();
        using var c = OpenBytes(dir, Zip.Bytes([pkl, new("archive/byteorder", "little"u8.ToArray()), data]));
        Assert.Equal([1f, 2, 3, 4], c.ReadSingles(c.Tensors[0]));
    }

    [Fact]
    public void Zip64_IsRead_AndItsInconsistenciesRefused()
    {
        var pickle = Pickle.StateDict(("w", p => p.Tensor("0", "FloatStorage", 4, 0, [2, 2])));
        ZEntry[] entries = [new("archive/data.pkl", pickle), new("archive/data/0", F32(1, 2, 3, 4))];
        var z = Zip.Bytes(entries, zip64: true);
        using (var dir = new TempDir())
        using (var c = OpenBytes(dir, z))
            Assert.Equal([1f, 2, 3, 4], c.ReadSingles(c.Tensors[0]));

        var b = (byte[])z.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(Zip.End(b) + 16), 7);
        Refused(b, null, "zip64 end record disagrees with the end-of-central-directory record");

        b = (byte[])z.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(Zip.End(b) - 20 + 16), 2);
        Refused(b, null, "multi-disk");

        b = (byte[])z.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(Zip.End(b) - 20 + 8), (ulong)b.Length);
        Refused(b, null, "zip64 end record offset");

        // A directory record that defers to zip64 without the extra field.
        var plain = Zip.Bytes(entries);
        b = (byte[])plain.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(Zip.Central(b, "archive/data/0") + 42), 0xFFFFFFFF);
        Refused(b, null, "entry archive/data/0: a size or offset defers to zip64, but there is no zip64 extra field");

        b = (byte[])plain.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(Zip.End(b) + 16), 0xFFFFFFFF);
        Refused(b, null, "defers to zip64, but there is no zip64 end record");
    }

    [Fact]
    public void Zip64_AboveFourGiB_ReadsTheTensorAtItsRealOffset()
    {
        // A sparse file: a storage of 4 GiB + 16 bytes whose last four floats are written, then the version entry past 4 GiB.
        using var dir = new TempDir();
        var path = dir.File("big.bin");
        long gap = 4L << 30;
        long numel = (gap + 16) / 4;
        var pickle = Pickle.StateDict(
            ("all", p => p.Tensor("0", "FloatStorage", numel, 0, [numel])),
            ("last", p => p.Tensor("0", "FloatStorage", numel, numel - 4, [2, 2])));
        using (var f = new FileStream(path, FileMode.CreateNew))
            Zip.Write(f, [new("archive/data.pkl", pickle), new("archive/data/0", F32(1, 2, 3, 4), Gap: gap), new("archive/version", "3\n"u8.ToArray())], zip64: true);
        using var c = TorchCheckpoint.Open(path);
        Assert.True(c.TryGet("last", out var last));
        Assert.True(last.Begin > uint.MaxValue);
        Assert.Equal([1f, 2, 3, 4], c.ReadSingles(last));
        Assert.True(c.TryGet("all", out var all));
        Assert.Equal(gap + 16, all.ByteLength);
        var tail = new float[4];
        c.ReadSingles(all, numel - 4, tail);
        Assert.Equal([1f, 2, 3, 4], tail);
    }

    [Fact]
    public void HugePickle_IsRefusedBeforeItIsRead()
    {
        using var dir = new TempDir();
        var path = dir.File("big-pickle.bin");
        using (var f = new FileStream(path, FileMode.CreateNew))
            Zip.Write(f, [new("archive/data.pkl", [(byte)'.'], Gap: TorchCheckpoint.MaxPickleSize)]);
        var e = Assert.Throws<TorchCheckpointException>(() => TorchCheckpoint.Open(path));
        AssertMessage(e, path, null, [$"entry archive/data.pkl is {TorchCheckpoint.MaxPickleSize + 1} bytes, over the {TorchCheckpoint.MaxPickleSize} bytes"]);
    }
}
