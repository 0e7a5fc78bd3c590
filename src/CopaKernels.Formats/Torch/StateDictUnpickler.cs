using System.Buffers.Binary;
using System.Text;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Formats.Torch;

/// <summary>A storage of a checkpoint, as its persistent id names it: the zip entry <c>data/Key</c>.</summary>
/// <param name="Key">The storage's key, the name of its entry under <c>data/</c>.</param>
/// <param name="TypeName">The storage type as pickled, e.g. <c>torch.BFloat16Storage</c>.</param>
/// <param name="DType">Its element type.</param>
/// <param name="Numel">Number of elements the storage holds.</param>
internal sealed record TorchStorage(string Key, string TypeName, DType DType, long Numel);

/// <summary>A tensor as <c>torch._utils._rebuild_tensor_v2</c> would build it: a view of a storage.</summary>
/// <param name="Storage">The storage viewed.</param>
/// <param name="Offset">First element of the view, in storage elements.</param>
/// <param name="Size">Dimensions.</param>
/// <param name="Stride">Elements between neighbours along each dimension.</param>
internal sealed record TorchTensor(TorchStorage Storage, long Offset, long[] Size, long[] Stride);

/// <summary>
/// Reads the pickle of a <c>torch.save</c> state dict as data, executing nothing. Python's unpickler
/// imports and calls whatever the pickle names; this one knows a fixed list of names (the
/// <c>OrderedDict</c> and tensor-rebuilding functions and the storage types) and builds plain records
/// for them, and knows only the opcodes a state dict is written with. Anything else is an error that
/// names the opcode or global. Nesting depth, open marks and the number of objects are bounded, so a
/// small hostile pickle cannot make it use much time or memory; lists and dicts can no longer change
/// once placed in another container (a state dict pickle fills each before placing it), which also
/// rules out cycles.
/// </summary>
internal sealed class StateDictUnpickler
{
    /// <summary>Deepest nesting of containers (and of open marks). A state dict needs about 4.</summary>
    public const int MaxDepth = 32;

    /// <summary>
    /// Most values pushed plus memo entries made. A state dict costs about 40 per tensor, so this is
    /// room for about 100,000 tensors, while holding the memory a forged pickle can take to a few
    /// hundred MiB at worst.
    /// </summary>
    public const int MaxObjects = 4_000_000;

    private readonly byte[] _data;
    private readonly string _entry, _path;
    private readonly List<object?> _stack = [];
    private readonly Stack<int> _marks = new();
    private readonly Dictionary<long, object?> _memo = [];
    private readonly Dictionary<string, TorchStorage> _storages = new(StringComparer.Ordinal);
    private int _pos, _op, _objects;

    private StateDictUnpickler(byte[] data, string entry, string path) => (_data, _entry, _path) = (data, entry, path);

    /// <summary>
    /// The tensors of the pickled top-level dict, in its order. The dict must map names to tensors
    /// (plain tensors or <c>nn.Parameter</c>s); a nested dict such as <c>{"state_dict": {...}}</c> is
    /// refused rather than flattened, since which level holds the weights is the saver's convention.
    /// </summary>
    public static List<(string Name, TorchTensor Tensor)> Parse(byte[] pickle, string entry, string path)
        => new StateDictUnpickler(pickle, entry, path).Run();

    private enum Kind { OrderedDict, RebuildTensor, RebuildParameter, RebuildParameterWithState, StorageType }

    /// <summary>An allowed global: what it is, and for a storage type its element type.</summary>
    private sealed record Global(string Text, Kind Kind, DType DType = default);

    private abstract class Container
    {
        public int Depth = 1;
        public bool Placed;
    }

    private sealed class Tuple(object?[] items) : Container { public readonly object?[] Items = items; }
    private sealed class List : Container { public readonly List<object?> Items = []; }

    private sealed class Dict : Container
    {
        public readonly List<KeyValuePair<object, object?>> Items = [];
        public readonly HashSet<object> Keys = [];
    }

    private List<(string, TorchTensor)> Run()
    {
        object? result = null;
        bool stopped = false;
        while (!stopped)
        {
            _op = _pos;
            byte op = Byte();
            switch (op)
            {
                case 0x80: // PROTO
                    if (Byte() is var protocol && protocol > 5) throw Bad($"pickle protocol {protocol} is unknown");
                    break;
                case 0x95: // FRAME: a length prefix for buffered reading; the content follows as usual
                    if (I64() > _data.Length - _pos) throw Bad("frame runs past the end of the pickle");
                    break;
                case (byte)'.': // STOP
                    result = Pop();
                    if (_stack.Count != 0 || _marks.Count != 0) throw Bad("values left on the stack at STOP");
                    if (_pos != _data.Length) throw Bad($"{_data.Length - _pos} bytes after STOP");
                    stopped = true;
                    break;
                case (byte)'(': // MARK
                    if (_marks.Count >= MaxDepth) throw Bad($"more than {MaxDepth} nested marks");
                    _marks.Push(_stack.Count);
                    break;
                case (byte)'}': Push(new Dict()); break; // EMPTY_DICT
                case (byte)']': Push(new List()); break; // EMPTY_LIST
                case (byte)')': Push(MakeTuple([])); break; // EMPTY_TUPLE
                case (byte)'t': Push(MakeTuple(PopMark())); break; // TUPLE
                case 0x85: Push(MakeTuple([Pop()])); break; // TUPLE1
                case 0x86: { var b = Pop(); var a = Pop(); Push(MakeTuple([a, b])); break; } // TUPLE2
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(MakeTuple([a, b, c])); break; } // TUPLE3
                case (byte)'N': Push(null); break; // NONE
                case 0x88: Push(true); break; // NEWTRUE
                case 0x89: Push(false); break; // NEWFALSE
                case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(Take(4))); break; // BININT
                case (byte)'K': Push((long)Byte()); break; // BININT1
                case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(Take(2))); break; // BININT2
                case 0x8a: Push(Long1()); break; // LONG1
                case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(Take(8))); break; // BINFLOAT
                case (byte)'X': Push(Utf8(Take(U32()))); break; // BINUNICODE
                case 0x8c: Push(Utf8(Take(Byte()))); break; // SHORT_BINUNICODE
                case (byte)'c': { var module = Line(); var name = Line(); Push(Resolve(module, name)); break; } // GLOBAL
                case 0x93: // STACK_GLOBAL
                {
                    var name = Pop();
                    var module = Pop();
                    if (module is not string m || name is not string n) throw Bad("STACK_GLOBAL needs two strings");
                    Push(Resolve(m, n));
                    break;
                }
                case (byte)'Q': Push(PersistentLoad(Pop())); break; // BINPERSID
                case (byte)'R': { var args = Pop(); var f = Pop(); Push(Reduce(f, args)); break; } // REDUCE
                case (byte)'b': Build(Pop(), Peek()); break; // BUILD
                case (byte)'s': { var v = Pop(); var k = Pop(); SetItems(Peek(), [k, v]); break; } // SETITEM
                case (byte)'u': { var items = PopMark(); SetItems(Peek(), items); break; } // SETITEMS
                case (byte)'a': { var v = Pop(); Append(Peek(), [v]); break; } // APPEND
                case (byte)'e': { var items = PopMark(); Append(Peek(), items); break; } // APPENDS
                case (byte)'q': Memo(Byte()); break; // BINPUT
                case (byte)'r': Memo(U32()); break; // LONG_BINPUT
                case 0x94: Memo(_memo.Count); break; // MEMOIZE
                case (byte)'h': Push(Recall(Byte())); break; // BINGET
                case (byte)'j': Push(Recall(U32())); break; // LONG_BINGET
                default:
                    throw Bad($"opcode 0x{op:x2} ({OpName(op)}) is not allowed in a state dict pickle");
            }
        }
        return TopLevel(result);
    }

    private List<(string, TorchTensor)> TopLevel(object? result)
    {
        if (result is not Dict top) throw Bad($"the pickle holds {A(TypeName(result))}, not a dict of tensors", at: false);
        var tensors = new List<(string, TorchTensor)>(top.Items.Count);
        foreach (var (key, value) in top.Items)
        {
            if (key is not string name) throw new TorchCheckpointException(_path, null, $"{_entry}: a key of the state dict is {A(TypeName(key))}, not a tensor name");
            tensors.Add((name, value switch
            {
                TorchTensor t => t,
                Dict => throw new TorchCheckpointException(_path, name, "holds a dict, not a tensor: this reader takes a flat state dict (name → tensor); save the inner dict itself"),
                _ => throw new TorchCheckpointException(_path, name, $"holds {A(TypeName(value))}, not a tensor: this reader takes a flat state dict (name → tensor)"),
            }));
        }
        return tensors;
    }

    private object Resolve(string module, string name) => (module, name) switch
    {
        ("collections", "OrderedDict") => new Global("collections.OrderedDict", Kind.OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => new Global("torch._utils._rebuild_tensor_v2", Kind.RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => new Global("torch._utils._rebuild_parameter", Kind.RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => new Global("torch._utils._rebuild_parameter_with_state", Kind.RebuildParameterWithState),
        ("torch", _) when StorageDType(name) is { } d => new Global("torch." + name, Kind.StorageType, d),
        ("torch", _) when name.EndsWith("Storage", StringComparison.Ordinal) =>
            throw Bad($"storage type torch.{name} is not supported (float, integer and bool storages are)"),
        _ => throw Bad($"global {module}.{name} is not allowed: a state dict needs only collections.OrderedDict, "
            + "torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and torch storage types"),
    };

    /// <summary>The element type of a <c>torch.*Storage</c> type (torch's own table), or null.</summary>
    private static DType? StorageDType(string name) => name switch
    {
        "BFloat16Storage" => DType.BF16, "HalfStorage" => DType.F16, "FloatStorage" => DType.F32, "DoubleStorage" => DType.F64,
        "LongStorage" => DType.I64, "IntStorage" => DType.I32, "ShortStorage" => DType.I16, "CharStorage" => DType.I8,
        "ByteStorage" => DType.U8, "BoolStorage" => DType.BOOL, "ComplexFloatStorage" => DType.C64,
        _ => null,
    };

    /// <summary><c>persistent_load</c> of torch.save: <c>('storage', type, key, location, numel)</c>.</summary>
    private TorchStorage PersistentLoad(object? pid)
    {
        if (pid is not Tuple { Items: ["storage", Global { Kind: Kind.StorageType } type, string key, string, long numel] })
            throw Bad($"persistent id {Describe(pid)} is not ('storage', storage type, key, location, numel)");
        if (numel < 0) throw Bad($"storage {key} claims {numel} elements");
        var storage = new TorchStorage(key, type.Text, type.DType, numel);
        if (!_storages.TryGetValue(key, out var seen)) _storages.Add(key, seen = storage);
        else if (seen != storage) throw Bad($"storage {key} is declared twice, as {seen.TypeName} of {seen.Numel} and {storage.TypeName} of {storage.Numel} elements");
        return seen;
    }

    private object Reduce(object? f, object? args)
    {
        if (f is not Global g) throw Bad($"REDUCE of a {TypeName(f)}: only allowed functions may be called");
        if (args is not Tuple t) throw Bad($"REDUCE of {g.Text} with {A(TypeName(args))} for arguments");
        var a = t.Items;
        switch (g.Kind)
        {
            case Kind.OrderedDict when a.Length == 0:
                return new Dict();
            // (storage, offset, size, stride, requires_grad, backward_hooks[, metadata]); torch 2 adds metadata only when a tensor has any.
            case Kind.RebuildTensor when a is [TorchStorage s, long offset, Tuple size, Tuple stride, bool, Dict, ..] && (a.Length == 6 || a is [.., Dict or null] && a.Length == 7):
                var sz = Longs(size, "size");
                var st = Longs(stride, "stride");
                if (sz.Length != st.Length) throw Bad($"tensor size {Describe(size)} and stride {Describe(stride)} differ in length");
                return new TorchTensor(s, offset, sz, st);
            case Kind.RebuildParameter when a is [TorchTensor p, bool, Dict]:
                return p;
            case Kind.RebuildParameterWithState when a is [TorchTensor p, bool, Dict, Dict or Tuple or null]:
                return p;
            default:
                throw Bad($"{g.Text} cannot be called with {Describe(t)}");
        }
    }

    /// <summary>BUILD, allowed only where an OrderedDict gets its attributes (a module's state dict carries <c>_metadata</c>): kept as data, unused.</summary>
    private void Build(object? state, object? target)
    {
        if (target is not Dict d || state is not (Dict or null)) throw Bad($"BUILD of a {TypeName(target)} with a {TypeName(state)}: only an OrderedDict's attributes may be set");
        if (d.Placed) throw Changed();
        Place(state, d);
    }

    private void SetItems(object? target, object?[] items)
    {
        if (target is not Dict d) throw Bad($"SETITEM on a {TypeName(target)}");
        if (items.Length % 2 != 0) throw Bad("SETITEMS with an odd number of values");
        for (int i = 0; i < items.Length; i += 2)
        {
            var key = items[i] is string or long ? items[i]! : throw Bad($"dict key {Describe(items[i])} is not a string or an integer");
            Place(items[i + 1], d);
            if (!d.Keys.Add(key)) throw Bad($"dict key {Describe(key)} is set twice");
            d.Items.Add(new(key, items[i + 1]));
        }
    }

    private void Append(object? target, object?[] items)
    {
        if (target is not List l) throw Bad($"APPEND to a {TypeName(target)}");
        foreach (var item in items) Place(item, l);
        l.Items.AddRange(items);
    }

    /// <summary>Marks <paramref name="item"/> as placed in <paramref name="into"/> (which must still be open) and deepens it.</summary>
    private void Place(object? item, Container into)
    {
        if (item is Container c) c.Placed = true;
        if (into.Placed) throw Changed();
        into.Depth = Math.Max(into.Depth, 1 + DepthOf(item));
        if (into.Depth > MaxDepth) throw Bad($"containers nested more than {MaxDepth} deep");
    }

    private Exception Changed() => Bad("a list or dict is changed after being placed in another container (or into itself), which a state dict pickle never does");

    private Tuple MakeTuple(object?[] items)
    {
        var t = new Tuple(items);
        foreach (var item in items) Place(item, t);
        return t;
    }

    private static int DepthOf(object? v) => v is Container c ? c.Depth : 0;

    private long[] Longs(Tuple t, string what)
    {
        var r = new long[t.Items.Length];
        for (int i = 0; i < r.Length; i++)
            r[i] = t.Items[i] is long v ? v : throw Bad($"tensor {what} {Describe(t)} is not a tuple of integers");
        return r;
    }

    private void Memo(long index)
    {
        if (!_memo.ContainsKey(index)) Count();
        _memo[index] = Peek();
    }

    private object? Recall(long index) => _memo.TryGetValue(index, out var v) ? v : throw Bad($"memo index {index} was never set");

    private void Push(object? v)
    {
        Count();
        _stack.Add(v);
    }

    private void Count()
    {
        if (++_objects > MaxObjects) throw Bad($"more than {MaxObjects:N0} objects, over this reader's bound for a state dict");
    }

    private object? Pop()
    {
        if (_stack.Count <= (_marks.Count > 0 ? _marks.Peek() : 0)) throw Bad("stack underflow");
        var v = _stack[^1];
        _stack.RemoveAt(_stack.Count - 1);
        return v;
    }

    private object? Peek() => _stack.Count > 0 ? _stack[^1] : throw Bad("stack underflow");

    private object?[] PopMark()
    {
        if (_marks.Count == 0) throw Bad("no mark to pop to");
        int at = _marks.Pop();
        var items = _stack.GetRange(at, _stack.Count - at).ToArray();
        _stack.RemoveRange(at, _stack.Count - at);
        return items;
    }

    private byte Byte() => _pos < _data.Length ? _data[_pos++] : throw Truncated();

    private ReadOnlySpan<byte> Take(long n)
    {
        if (n > _data.Length - _pos) throw Truncated();
        var s = _data.AsSpan(_pos, (int)n);
        _pos += (int)n;
        return s;
    }

    private uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
    private long I64() => BinaryPrimitives.ReadInt64LittleEndian(Take(8));

    /// <summary>LONG1: a little-endian two's-complement integer of n bytes; more than 8 is refused.</summary>
    private long Long1()
    {
        int n = Byte();
        if (n > 8) throw Bad($"a {n}-byte integer is out of range");
        var b = Take(n);
        long v = 0;
        for (int i = n - 1; i >= 0; i--) v = (v << 8) | b[i];
        if (n is > 0 and < 8 && (b[n - 1] & 0x80) != 0) v -= 1L << (8 * n);
        return v;
    }

    /// <summary>A GLOBAL operand: text up to a newline, short (a Python dotted name).</summary>
    private string Line()
    {
        int end = Array.IndexOf(_data, (byte)'\n', _pos, Math.Min(256, _data.Length - _pos));
        if (end < 0) throw Bad("GLOBAL name is not a line of at most 255 bytes");
        var s = Utf8(_data.AsSpan(_pos, end - _pos));
        _pos = end + 1;
        return s;
    }

    private string Utf8(ReadOnlySpan<byte> b)
    {
        try { return s_utf8.GetString(b); }
        catch (DecoderFallbackException) { throw Bad("a string is not valid UTF-8"); }
    }

    private static readonly UTF8Encoding s_utf8 = new(false, true);

    private Exception Truncated() => Bad("the pickle ends without STOP (truncated)");

    private TorchCheckpointException Bad(string reason, bool at = true)
        => new(_path, null, at ? $"{_entry} at byte {_op}: {reason}" : $"{_entry}: {reason}");

    private static string A(string noun) => ("aeiou".Contains(noun[0]) ? "an " : "a ") + noun;

    private static string TypeName(object? v) => v switch
    {
        null => "None", bool => "bool", long => "int", double => "float", string => "str",
        Tuple => "tuple", List => "list", Dict => "dict", TorchStorage => "storage", TorchTensor => "tensor",
        Global g => g.Text, _ => v.GetType().Name,
    };

    /// <summary>A short description of a value for messages: scalars as written, containers by type and length.</summary>
    private static string Describe(object? v) => v switch
    {
        string s => "'" + (s.Length > 40 ? s[..40] + "..." : s) + "'",
        long or double or bool => Convert.ToString(v, System.Globalization.CultureInfo.InvariantCulture)!,
        Tuple t when t.Items.Length <= 8 && t.Items.All(i => i is not Container) => "(" + string.Join(", ", t.Items.Select(Describe)) + ")",
        Tuple t => $"a tuple of {t.Items.Length}",
        _ => TypeName(v),
    };

    /// <summary>Pickle opcode names (Python's pickletools), for the messages that refuse them.</summary>
    private static string OpName(byte op) => op switch
    {
        (byte)'0' => "POP", (byte)'1' => "POP_MARK", (byte)'2' => "DUP", (byte)'F' => "FLOAT", (byte)'I' => "INT",
        (byte)'L' => "LONG", (byte)'P' => "PERSID", (byte)'S' => "STRING", (byte)'T' => "BINSTRING",
        (byte)'U' => "SHORT_BINSTRING", (byte)'V' => "UNICODE", (byte)'d' => "DICT", (byte)'g' => "GET",
        (byte)'i' => "INST", (byte)'l' => "LIST", (byte)'o' => "OBJ", (byte)'p' => "PUT", (byte)'B' => "BINBYTES",
        (byte)'C' => "SHORT_BINBYTES", 0x81 => "NEWOBJ", 0x82 => "EXT1", 0x83 => "EXT2", 0x84 => "EXT4",
        0x8b => "LONG4", 0x8d => "BINUNICODE8", 0x8e => "BINBYTES8", 0x8f => "EMPTY_SET", 0x90 => "ADDITEMS",
        0x91 => "FROZENSET", 0x92 => "NEWOBJ_EX", 0x96 => "BYTEARRAY8", 0x97 => "NEXT_BUFFER", 0x98 => "READONLY_BUFFER",
        _ => "not a pickle opcode",
    };
}
