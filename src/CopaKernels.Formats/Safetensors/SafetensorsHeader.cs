using System.Text;
using System.Text.Json;
using System.Text.Unicode;
using K = CopaKernels.Formats.Safetensors.SafetensorsErrorKind;

namespace CopaKernels.Formats.Safetensors;

/// <summary>
/// A parsed and fully validated safetensors header. All validation of the format happens in
/// <see cref="Parse"/>, with checked arithmetic and without allocating anything proportional to
/// the sizes the header claims.
/// </summary>
public sealed class SafetensorsHeader
{
    /// <summary>Largest header accepted, in bytes (the reference implementation's limit).</summary>
    public const long MaxHeaderSize = 100_000_000;

    /// <summary>Bytes before the header: its little-endian u64 length.</summary>
    public const int PrefixSize = 8;

    private readonly Dictionary<string, TensorInfo> _byName;

    private SafetensorsHeader(List<TensorInfo> tensors, Dictionary<string, string> metadata, long dataLength)
    {
        Tensors = tensors;
        Metadata = metadata;
        DataLength = dataLength;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>Tensors in the order of their data (ascending offsets).</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>The <c>__metadata__</c> strings (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Size of the data section in bytes.</summary>
    public long DataLength { get; }

    /// <summary>Looks a tensor up by name.</summary>
    public bool TryGet(string name, out TensorInfo info) => _byName.TryGetValue(name, out info!);

    /// <summary>
    /// Validates the 8-byte length prefix against the file length and returns the header length.
    /// </summary>
    public static long CheckPrefix(ReadOnlySpan<byte> prefix, long fileLength, string? path)
    {
        if (fileLength < PrefixSize || prefix.Length < PrefixSize)
            throw new SafetensorsException(K.FileTooSmall, path, null, $"file is {fileLength} bytes, shorter than the 8-byte header length");
        ulong n = BitConverter.ToUInt64(prefix[..PrefixSize]);
        if (n > MaxHeaderSize)
            throw new SafetensorsException(K.HeaderTooLarge, path, null, $"header length {n} exceeds the limit of {MaxHeaderSize} bytes");
        if ((long)n > fileLength - PrefixSize)
            throw new SafetensorsException(K.HeaderPastEnd, path, null, $"header length {n} runs past the end of the file ({fileLength} bytes)");
        return (long)n;
    }

    /// <summary>Parses and validates a header (the bytes after the length prefix).</summary>
    /// <param name="header">The header bytes.</param>
    /// <param name="dataLength">Bytes in the file after the header.</param>
    /// <param name="path">File name used in error messages.</param>
    public static SafetensorsHeader Parse(ReadOnlySpan<byte> header, long dataLength, string? path)
    {
        if (!Utf8.IsValid(header))
            throw new SafetensorsException(K.HeaderNotUtf8, path, null, "header is not valid UTF-8");
        // JSON whitespace may come before the '{': the reference reader hands the header to serde_json,
        // which skips it, and writers use it to pad the header so the data section is aligned
        // (huggingface/safetensors, safetensors/src/tensor.rs: SafeTensors::read_metadata, and its test
        // test_whitespace_leading_padded_header). Any other first byte (a BOM, a form feed) is refused.
        int start = 0;
        while (start < header.Length && header[start] is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r') start++;
        if (start == header.Length || header[start] != (byte)'{')
            throw new SafetensorsException(K.HeaderStart, path, null, "header does not start with '{' (after any JSON whitespace)");

        var tensors = new List<TensorInfo>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var reader = new Utf8JsonReader(header, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 16 });
        string? current = null;
        try
        {
            Expect(ref reader, JsonTokenType.StartObject, K.HeaderNotObject, path, null, "header is not a JSON object");
            while (true)
            {
                reader.Read();
                if (reader.TokenType == JsonTokenType.EndObject) break;
                current = reader.GetString()!;
                if (!seen.Add(current))
                    throw new SafetensorsException(K.DuplicateKey, path, current, "name appears twice in the header");
                if (current == "__metadata__")
                {
                    ReadMetadata(ref reader, metadata, path);
                }
                else
                {
                    tensors.Add(ReadTensor(ref reader, current, path));
                }
                current = null;
            }
            // Anything after the object other than whitespace (spaces are the format's padding) is an error.
            if (reader.Read())
                throw new SafetensorsException(K.InvalidJson, path, null, "unexpected bytes after the header object");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            // InvalidOperationException: an escaped lone surrogate (valid JSON syntax, not a valid string).
            throw new SafetensorsException(K.InvalidJson, path, current, $"header is not valid JSON ({FirstLine(e.Message)})", e);
        }

        // The tensors must tile the data section exactly, from 0, in some order.
        tensors.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
        long expected = 0;
        foreach (var t in tensors)
        {
            if (t.Begin != expected)
            {
                var what = t.Begin > expected ? $"a hole of {t.Begin - expected} bytes before it" : "it overlaps the previous tensor";
                throw new SafetensorsException(K.OffsetsNotContiguous, path, t.Name, $"data_offsets [{t.Begin}, {t.End}] are not contiguous: {what}");
            }
            expected = t.End;
        }
        if (dataLength < expected)
            throw new SafetensorsException(K.DataTooShort, path, tensors.Count > 0 ? tensors[^1].Name : null,
                $"data section is {dataLength} bytes but the tensors need {expected} (file truncated?)");
        if (dataLength > expected)
            throw new SafetensorsException(K.DataTooLong, path, null,
                $"data section is {dataLength} bytes but the tensors cover only {expected}");
        return new SafetensorsHeader(tensors, metadata, dataLength);
    }

    private static void ReadMetadata(ref Utf8JsonReader reader, Dictionary<string, string> metadata, string? path)
    {
        reader.Read();
        if (reader.TokenType == JsonTokenType.Null) return;
        if (reader.TokenType != JsonTokenType.StartObject)
            throw new SafetensorsException(K.InvalidMetadata, path, null, "__metadata__ is not an object of strings");
        while (true)
        {
            reader.Read();
            if (reader.TokenType == JsonTokenType.EndObject) return;
            var key = reader.GetString()!;
            reader.Read();
            if (reader.TokenType != JsonTokenType.String)
            {
                var isTensor = key is "dtype" or "shape" or "data_offsets";
                throw new SafetensorsException(K.InvalidMetadata, path, null, isTensor
                    ? "__metadata__ is a reserved name and cannot be a tensor"
                    : $"__metadata__ value of '{key}' is not a string");
            }
            if (!metadata.TryAdd(key, reader.GetString()!))
                throw new SafetensorsException(K.DuplicateKey, path, null, $"__metadata__ key '{key}' appears twice");
        }
    }

    private static TensorInfo ReadTensor(ref Utf8JsonReader reader, string name, string? path)
    {
        Expect(ref reader, JsonTokenType.StartObject, K.InvalidTensorEntry, path, name, "entry is not an object");
        string? dtypeName = null;
        List<long>? shape = null;
        long[]? offsets = null;
        while (true)
        {
            reader.Read();
            if (reader.TokenType == JsonTokenType.EndObject) break;
            var field = reader.GetString();
            switch (field)
            {
                case "dtype":
                    if (dtypeName != null) throw Dup(field);
                    reader.Read();
                    if (reader.TokenType != JsonTokenType.String)
                        throw new SafetensorsException(K.InvalidTensorEntry, path, name, "dtype is not a string");
                    dtypeName = reader.GetString()!;
                    break;
                case "shape":
                    if (shape != null) throw Dup(field);
                    Expect(ref reader, JsonTokenType.StartArray, K.InvalidShape, path, name, "shape is not an array");
                    shape = new List<long>();
                    while (true)
                    {
                        reader.Read();
                        if (reader.TokenType == JsonTokenType.EndArray) break;
                        shape.Add(ReadNonNegative(ref reader, path, name, "shape", K.InvalidShape));
                    }
                    break;
                case "data_offsets":
                    if (offsets != null) throw Dup(field);
                    Expect(ref reader, JsonTokenType.StartArray, K.InvalidOffsets, path, name, "data_offsets is not an array");
                    var list = new List<long>(2);
                    while (true)
                    {
                        reader.Read();
                        if (reader.TokenType == JsonTokenType.EndArray) break;
                        if (list.Count == 2)
                            throw new SafetensorsException(K.InvalidOffsets, path, name, "data_offsets has more than two entries");
                        list.Add(ReadNonNegative(ref reader, path, name, "data_offsets", K.InvalidOffsets));
                    }
                    if (list.Count != 2)
                        throw new SafetensorsException(K.InvalidOffsets, path, name, $"data_offsets has {list.Count} entries, expected 2");
                    offsets = list.ToArray();
                    break;
                default:
                    // Unknown fields are skipped, as the reference implementation does (forward compatibility).
                    reader.Read();
                    reader.Skip();
                    break;
            }
        }
        if (dtypeName == null) throw Missing("dtype");
        if (shape == null) throw Missing("shape");
        if (offsets == null) throw Missing("data_offsets");
        if (!DTypes.TryParse(dtypeName, out var dtype))
            throw new SafetensorsException(K.UnknownDType, path, name, $"unknown dtype '{Truncate(dtypeName)}'");

        long count = 1;
        foreach (var d in shape)
        {
            try { count = checked(count * d); }
            catch (OverflowException) { throw new SafetensorsException(K.ShapeOverflow, path, name, $"shape [{string.Join(", ", shape)}] overflows the element count"); }
        }
        long bits;
        try { bits = checked(count * dtype.Bits()); }
        catch (OverflowException) { throw new SafetensorsException(K.ShapeOverflow, path, name, $"shape [{string.Join(", ", shape)}] overflows the byte size"); }
        if (bits % 8 != 0)
            throw new SafetensorsException(K.MisalignedSize, path, name, $"{count} elements of {dtype} are not a whole number of bytes");
        long size = bits / 8;
        if (offsets[1] < offsets[0])
            throw new SafetensorsException(K.OffsetsReversed, path, name, $"data_offsets end {offsets[1]} is before begin {offsets[0]}");
        if (offsets[1] - offsets[0] != size)
            throw new SafetensorsException(K.SizeMismatch, path, name,
                $"data_offsets cover {offsets[1] - offsets[0]} bytes but {dtype} [{string.Join(", ", shape)}] needs {size}");
        return new TensorInfo(name, dtype, shape.ToArray(), offsets[0], offsets[1]);

        SafetensorsException Dup(string f) => new(K.InvalidTensorEntry, path, name, $"field '{f}' appears twice");
        SafetensorsException Missing(string f) => new(K.InvalidTensorEntry, path, name, $"entry has no '{f}'");
    }

    private static long ReadNonNegative(ref Utf8JsonReader reader, string? path, string name, string field, K kind)
    {
        if (reader.TokenType != JsonTokenType.Number)
            throw new SafetensorsException(kind, path, name, $"{field} holds a non-number");
        var raw = reader.HasValueSequence ? System.Buffers.BuffersExtensions.ToArray(reader.ValueSequence) : reader.ValueSpan.ToArray();
        bool negative = raw.Length > 0 && raw[0] == (byte)'-';
        for (int i = negative ? 1 : 0; i < raw.Length; i++)
            if (raw[i] < (byte)'0' || raw[i] > (byte)'9')
                throw new SafetensorsException(kind, path, name, $"{field} holds {Truncate(Encoding.UTF8.GetString(raw))}, not an integer");
        if (negative) // "-0" included, as the reference implementation rejects it
            throw new SafetensorsException(field == "shape" ? K.NegativeDimension : kind, path, name, $"{field} holds negative {Truncate(Encoding.UTF8.GetString(raw))}");
        if (!reader.TryGetInt64(out var v))
            throw new SafetensorsException(field == "shape" ? K.ShapeOverflow : kind, path, name, $"{field} value {Truncate(Encoding.UTF8.GetString(raw))} overflows 64 bits");
        return v;
    }

    private static void Expect(ref Utf8JsonReader reader, JsonTokenType type, K kind, string? path, string? tensor, string message)
    {
        if (!reader.Read() || reader.TokenType != type)
            throw new SafetensorsException(kind, path, tensor, message);
    }

    private static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "...";

    private static string FirstLine(string s)
    {
        var i = s.IndexOf('\n');
        return (i < 0 ? s : s[..i]).TrimEnd('.', ' ', '\r');
    }
}
