using System.Diagnostics;
using System.Text;
using Xunit.Abstractions;
using CopaKernels.Formats.Safetensors;
using K = CopaKernels.Formats.Safetensors.SafetensorsErrorKind;

namespace CopaKernels.Tests.Formats;

/// <summary>
/// The safetensors reader's validation, driven by hand-made bytes: one malformed file per rule
/// (and several per rule where the rule has corners), valid edge cases that must be accepted, and
/// a fuzz pass that allows no exception other than <see cref="SafetensorsException"/>.
/// </summary>
public class SafetensorsMalformedTests(ITestOutputHelper output)
{
    // ---------------------------------------------------------------- helpers

    /// <summary>A tensor entry as JSON text.</summary>
    private static string T(string dtype, string shape, long begin, long end)
        => $"{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[{begin},{end}]}}";

    /// <summary>File bytes: a JSON header (exact bytes) and <paramref name="data"/> data bytes.</summary>
    private static byte[] F(string header, long data = 0) => StBytes.Make(header, data);

    /// <summary>File bytes with a header given as raw bytes (for invalid UTF-8).</summary>
    private static byte[] FB(byte[] header, long data = 0) => StBytes.Make(header, data);

    /// <summary>Raw header bytes: ASCII text around a byte sequence.</summary>
    private static byte[] Raw(string before, byte[] middle, string after)
        => [.. Encoding.ASCII.GetBytes(before), .. middle, .. Encoding.ASCII.GetBytes(after)];

    /// <summary>Bytes that are only a length prefix (and whatever follows it).</summary>
    private static byte[] Prefix(ulong n, int extra)
    {
        var b = new byte[8 + extra];
        BitConverter.TryWriteBytes(b, n);
        for (int i = 0; i < extra; i++) b[8 + i] = (byte)' ';
        return b;
    }

    private static string Hex(byte[] b) => Convert.ToHexString(b);

    /// <summary>Tensors in data order as <c>name|dtype|[shape]|begin-end</c>, joined by "; ".</summary>
    private static string Describe(IReadOnlyList<TensorInfo> tensors)
        => string.Join("; ", tensors.Select(t => $"{t.Name}|{t.DType}|{t.ShapeText}|{t.Begin}-{t.End}"));

    /// <summary>Metadata as <c>key=value</c>, ordinal key order, joined by ", ".</summary>
    private static string Describe(IReadOnlyDictionary<string, string> metadata)
        => string.Join(", ", metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}={kv.Value}"));

    private static void AssertError(byte[] bytes, K kind, string? tensor, string caseName)
    {
        using var dir = new TempDir();
        var path = dir.File("case.safetensors");
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<SafetensorsException>(() => { using var f = SafetensorsFile.Open(path); });
        Assert.True(kind == e.Kind, $"{caseName}: expected {kind}, got {e.Kind} ({e.Message})");
        Assert.Equal(path, e.FilePath);
        Assert.True(tensor == e.Tensor, $"{caseName}: expected tensor {tensor ?? "<null>"}, got {e.Tensor ?? "<null>"} ({e.Message})");
        Assert.False(e.Message.Contains('\n') || e.Message.Contains('\r'), $"{caseName}: message is not one line: {e.Message}");
        Assert.StartsWith(path + ": ", e.Message);
        Assert.False(string.IsNullOrWhiteSpace(e.Reason), $"{caseName}: empty reason");
    }

    // ---------------------------------------------------------------- malformed files

    private static readonly string A4 = T("F32", "[1]", 0, 4);

    /// <summary>(case name, file bytes, expected kind, expected tensor or null).</summary>
    public static TheoryData<string, byte[], K, string?> Malformed()
    {
        var d = new TheoryData<string, byte[], K, string?>();
        void Add(string name, byte[] bytes, K kind, string? tensor = null) => d.Add(name, bytes, kind, tensor);

        // --- length prefix
        Add("empty file", [], K.FileTooSmall);
        for (int n = 1; n <= 7; n++)
            Add($"{n}-byte file", Enumerable.Repeat((byte)0, n).ToArray(), K.FileTooSmall);
        Add("7 bytes of a plausible prefix", [2, 0, 0, 0, 0, 0, 0], K.FileTooSmall);
        Add("header length ulong.MaxValue", StBytes.Make("{}", 0, ulong.MaxValue), K.HeaderTooLarge);
        Add("header length 2^63 (negative as long)", StBytes.Make("{}", 0, 1UL << 63), K.HeaderTooLarge);
        Add("header length 100,000,001", StBytes.Make("{}", 0, 100_000_001), K.HeaderTooLarge);
        Add("header length past end of file", StBytes.Make("{}", 0, 100), K.HeaderPastEnd);
        Add("header length one past end of file", StBytes.Make("{}", 3, 6), K.HeaderPastEnd);
        Add("prefix only, header length 1", Prefix(1, 0), K.HeaderPastEnd);

        // --- UTF-8
        Add("invalid UTF-8: 0xFF in a name", FB(Raw("{\"a", [0xFF], "\":" + A4 + "}"), 4), K.HeaderNotUtf8);
        Add("invalid UTF-8: lone continuation byte 0x80", FB(Raw("{\"", [0x80], "\":" + A4 + "}"), 4), K.HeaderNotUtf8);
        Add("invalid UTF-8: truncated 2-byte sequence", FB(Raw("{\"a", [0xC3], "\":" + A4 + "}"), 4), K.HeaderNotUtf8);
        Add("invalid UTF-8: truncated 4-byte sequence at end", FB(Raw("{}", [0xF0, 0x9F, 0x98], ""), 0), K.HeaderNotUtf8);
        Add("overlong UTF-8: '/' as C0 AF", FB(Raw("{\"a", [0xC0, 0xAF], "\":" + A4 + "}"), 4), K.HeaderNotUtf8);
        Add("overlong UTF-8: '{' as C1 BB", FB(Raw("", [0xC1, 0xBB], "}"), 0), K.HeaderNotUtf8);
        Add("overlong UTF-8: 3-byte E0 80 AF", FB(Raw("{\"a", [0xE0, 0x80, 0xAF], "\":" + A4 + "}"), 4), K.HeaderNotUtf8);
        Add("UTF-8 encoded lone high surrogate U+D800", FB(Raw("{\"a", [0xED, 0xA0, 0x80], "\":" + A4 + "}"), 4), K.HeaderNotUtf8);
        Add("UTF-8 encoded lone low surrogate U+DFFF", FB(Raw("{\"__metadata__\":{\"k\":\"", [0xED, 0xBF, 0xBF], "\"}}"), 0), K.HeaderNotUtf8);
        Add("UTF-8 encoded surrogate pair (CESU-8)", FB(Raw("{\"a", [0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80], "\":" + A4 + "}"), 4), K.HeaderNotUtf8);
        Add("UTF-8 above U+10FFFF", FB(Raw("{\"a", [0xF4, 0x90, 0x80, 0x80], "\":" + A4 + "}"), 4), K.HeaderNotUtf8);
        Add("invalid UTF-8 in the trailing padding", FB(Raw("{}  ", [0xFE], "   "), 0), K.HeaderNotUtf8);

        // --- start of the header
        // Leading JSON whitespace is accepted (see Valid); other leading bytes are not.
        Add("header starts with a UTF-8 BOM", FB(Raw("", [0xEF, 0xBB, 0xBF], "{}")), K.HeaderStart);
        Add("header starts with a form feed", F("\f{}"), K.HeaderStart);
        Add("header starts with a vertical tab", F("\v{}"), K.HeaderStart);
        Add("header starts with a no-break space", FB(Raw("", [0xC2, 0xA0], "{}")), K.HeaderStart);
        Add("header starts with NUL padding", FB(Raw("", [0, 0], "{}")), K.HeaderStart);
        Add("leading whitespace, then a JSON array", F("  []"), K.HeaderStart);
        Add("leading whitespace, then a lone '}'", F("\n}"), K.HeaderStart);
        Add("header length 0", F(""), K.HeaderStart);
        // A header that is a JSON array, number, string or literal fails the '{' check, so
        // HeaderNotObject is unreachable: a header starting with '{' is an object or invalid JSON.
        Add("header is a JSON array", F("[]"), K.HeaderStart);
        Add("header is a JSON number", F("42"), K.HeaderStart);
        Add("header is a JSON string", F("\"{}\""), K.HeaderStart);
        Add("header is JSON null", F("null"), K.HeaderStart);
        Add("header is all spaces", F("        "), K.HeaderStart);

        // --- invalid JSON
        Add("truncated: lone '{'", F("{"), K.InvalidJson);
        Add("truncated after a name", F("{\"a\""), K.InvalidJson);
        Add("truncated inside a tensor entry", F("{\"a\":{\"dtype\":\"F32\""), K.InvalidJson, "a");
        Add("truncated inside shape", F("{\"a\":{\"dtype\":\"F32\",\"shape\":[1"), K.InvalidJson, "a");
        Add("unterminated string", F("{\"a}"), K.InvalidJson);
        Add("missing colon", F("{\"a\" " + A4 + "}", 4), K.InvalidJson);
        Add("missing comma between tensors", F("{\"a\":" + A4 + " \"b\":" + T("F32", "[1]", 4, 8) + "}", 8), K.InvalidJson);
        Add("trailing comma after the last tensor", F("{\"a\":" + A4 + ",}", 4), K.InvalidJson);
        Add("trailing comma inside a tensor entry", F("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],}}", 4), K.InvalidJson, "a");
        Add("trailing comma inside shape", F("{\"a\":" + T("F32", "[1,]", 0, 4) + "}", 4), K.InvalidJson, "a");
        Add("single-quoted strings", F("{'a':{'dtype':'F32','shape':[1],'data_offsets':[0,4]}}", 4), K.InvalidJson);
        Add("unquoted name", F("{a:" + A4 + "}", 4), K.InvalidJson);
        Add("block comment", F("{/* c */\"a\":" + A4 + "}", 4), K.InvalidJson);
        Add("line comment", F("{\"a\":" + A4 + "// c\n}", 4), K.InvalidJson);
        Add("comment inside a tensor entry", F("{\"a\":{/* c */\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), K.InvalidJson, "a");
        Add("raw control character in a name", F("{\"a\u0001b\":" + A4 + "}", 4), K.InvalidJson);
        Add("invalid escape in a name", F("{\"a\\qb\":" + A4 + "}", 4), K.InvalidJson);
        Add("short \\u escape in a name", F("{\"a\\u12\":" + A4 + "}", 4), K.InvalidJson);
        Add("number with a leading zero", F("{\"a\":" + T("F32", "[01]", 0, 4) + "}", 4), K.InvalidJson, "a");
        Add("NaN literal in shape", F("{\"a\":" + T("F32", "[NaN]", 0, 4) + "}", 4), K.InvalidJson, "a");
        Add("nesting deeper than the limit in an unknown field",
            F("{\"a\":{\"x\":" + new string('[', 40) + new string(']', 40) + ",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), K.InvalidJson, "a");
        Add("trailing garbage after the object", F("{}x"), K.InvalidJson);
        Add("trailing garbage after padding", F("{}    x  "), K.InvalidJson);
        Add("a second object after the first", F("{}{}"), K.InvalidJson);
        Add("NUL padding after the object", FB(Raw("{}", [0, 0, 0, 0, 0, 0], ""), 0), K.InvalidJson);
        Add("NUL padding after a tensor", FB(Raw("{\"a\":" + A4 + "}", [0, 0, 0], ""), 4), K.InvalidJson);

        // --- duplicate names
        Add("duplicate tensor name", F("{\"a\":" + A4 + ",\"a\":" + T("F32", "[1]", 4, 8) + "}", 8), K.DuplicateKey, "a");
        Add("duplicate tensor name written with an escape", F("{\"ab\":" + A4 + ",\"a\\u0062\":" + T("F32", "[1]", 4, 8) + "}", 8), K.DuplicateKey, "ab");
        Add("duplicate __metadata__", F("{\"__metadata__\":{\"x\":\"1\"},\"__metadata__\":{\"y\":\"2\"}}"), K.DuplicateKey, "__metadata__");
        Add("duplicate key inside __metadata__", F("{\"__metadata__\":{\"x\":\"1\",\"x\":\"2\"}}"), K.DuplicateKey);

        // --- __metadata__
        Add("__metadata__ is a number", F("{\"__metadata__\":1}"), K.InvalidMetadata);
        Add("__metadata__ is a string", F("{\"__metadata__\":\"pt\"}"), K.InvalidMetadata);
        Add("__metadata__ is an array", F("{\"__metadata__\":[\"a\",\"b\"]}"), K.InvalidMetadata);
        Add("__metadata__ is true", F("{\"__metadata__\":true}"), K.InvalidMetadata);
        Add("__metadata__ value is a number", F("{\"__metadata__\":{\"format\":1}}"), K.InvalidMetadata);
        Add("__metadata__ value is an object", F("{\"__metadata__\":{\"format\":{\"a\":\"b\"}}}"), K.InvalidMetadata);
        Add("__metadata__ value is null", F("{\"__metadata__\":{\"format\":null}}"), K.InvalidMetadata);
        Add("__metadata__ value is an array of strings", F("{\"__metadata__\":{\"format\":[\"pt\"]}}"), K.InvalidMetadata);
        Add("tensor named __metadata__", F("{\"__metadata__\":" + A4 + "}", 4), K.InvalidMetadata);
        Add("tensor named __metadata__, shape first", F("{\"__metadata__\":{\"shape\":[1],\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4), K.InvalidMetadata);

        // --- tensor entry
        Add("tensor entry is a number", F("{\"a\":4}"), K.InvalidTensorEntry, "a");
        Add("tensor entry is a string", F("{\"a\":\"F32\"}"), K.InvalidTensorEntry, "a");
        Add("tensor entry is an array", F("{\"a\":[\"F32\",[1],[0,4]]}", 4), K.InvalidTensorEntry, "a");
        Add("tensor entry is null", F("{\"a\":null}"), K.InvalidTensorEntry, "a");
        Add("tensor entry is an empty object", F("{\"a\":{}}"), K.InvalidTensorEntry, "a");
        Add("missing dtype", F("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4), K.InvalidTensorEntry, "a");
        Add("missing shape", F("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4), K.InvalidTensorEntry, "a");
        Add("missing data_offsets", F("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), K.InvalidTensorEntry, "a");
        Add("second tensor misses data_offsets", F("{\"a\":" + A4 + ",\"b\":{\"dtype\":\"F32\",\"shape\":[1]}}", 8), K.InvalidTensorEntry, "b");
        Add("dtype is a number", F("{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4), K.InvalidTensorEntry, "a");
        Add("dtype is null", F("{\"a\":{\"dtype\":null,\"shape\":[1],\"data_offsets\":[0,4]}}", 4), K.InvalidTensorEntry, "a");
        Add("dtype is an array", F("{\"a\":{\"dtype\":[\"F32\"],\"shape\":[1],\"data_offsets\":[0,4]}}", 4), K.InvalidTensorEntry, "a");
        Add("dtype appears twice", F("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), K.InvalidTensorEntry, "a");
        Add("shape appears twice", F("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"shape\":[1],\"data_offsets\":[0,4]}}", 4), K.InvalidTensorEntry, "a");
        Add("data_offsets appears twice", F("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"data_offsets\":[0,4]}}", 4), K.InvalidTensorEntry, "a");

        // --- dtype
        Add("unknown dtype F128", F("{\"a\":" + T("F128", "[1]", 0, 16) + "}", 16), K.UnknownDType, "a");
        Add("lowercase dtype f32", F("{\"a\":" + T("f32", "[1]", 0, 4) + "}", 4), K.UnknownDType, "a");
        Add("empty dtype", F("{\"a\":" + T("", "[1]", 0, 4) + "}", 4), K.UnknownDType, "a");
        Add("dtype with a trailing space", F("{\"a\":" + T("F32 ", "[1]", 0, 4) + "}", 4), K.UnknownDType, "a");
        Add("dtype long alias float32", F("{\"a\":" + T("float32", "[1]", 0, 4) + "}", 4), K.UnknownDType, "a");
        Add("very long unknown dtype", F("{\"a\":" + T(new string('X', 500), "[1]", 0, 4) + "}", 4), K.UnknownDType, "a");

        // --- shape
        Add("shape is a number", F("{\"a\":" + T("F32", "4", 0, 4) + "}", 4), K.InvalidShape, "a");
        Add("shape is a string", F("{\"a\":" + T("F32", "\"[1]\"", 0, 4) + "}", 4), K.InvalidShape, "a");
        Add("shape is null", F("{\"a\":" + T("F32", "null", 0, 4) + "}", 4), K.InvalidShape, "a");
        Add("shape is an object", F("{\"a\":" + T("F32", "{\"0\":1}", 0, 4) + "}", 4), K.InvalidShape, "a");
        Add("shape holds 2.0", F("{\"a\":" + T("F32", "[2.0]", 0, 8) + "}", 8), K.InvalidShape, "a");
        Add("shape holds 1e3", F("{\"a\":" + T("F32", "[1e3]", 0, 4000) + "}", 4000), K.InvalidShape, "a");
        Add("shape holds 1E3", F("{\"a\":" + T("U8", "[1E3]", 0, 1000) + "}", 1000), K.InvalidShape, "a");
        Add("shape holds 0.5", F("{\"a\":" + T("F32", "[0.5]", 0, 2) + "}", 2), K.InvalidShape, "a");
        Add("shape holds -2.5", F("{\"a\":" + T("F32", "[-2.5]", 0, 4) + "}", 4), K.InvalidShape, "a");
        Add("shape holds a string", F("{\"a\":" + T("F32", "[\"2\"]", 0, 8) + "}", 8), K.InvalidShape, "a");
        Add("shape holds null", F("{\"a\":" + T("F32", "[null]", 0, 4) + "}", 4), K.InvalidShape, "a");
        Add("shape holds true", F("{\"a\":" + T("F32", "[true]", 0, 4) + "}", 4), K.InvalidShape, "a");
        Add("shape holds a nested array", F("{\"a\":" + T("F32", "[[2]]", 0, 8) + "}", 8), K.InvalidShape, "a");
        Add("shape holds -1", F("{\"a\":" + T("F32", "[-1]", 0, 4) + "}", 4), K.NegativeDimension, "a");
        Add("shape holds a negative dimension", F("{\"a\":" + T("F32", "[2,-3]", 0, 24) + "}", 24), K.NegativeDimension, "a");
        Add("shape holds a negative dimension below long.MinValue", F("{\"a\":" + T("F32", "[-9223372036854775809]", 0, 4) + "}", 4), K.NegativeDimension, "a");
        Add("dimension 2^63", F("{\"a\":" + T("U8", "[9223372036854775808]", 0, 4) + "}", 4), K.ShapeOverflow, "a");
        Add("dimension 2^64", F("{\"a\":" + T("U8", "[18446744073709551616]", 0, 4) + "}", 4), K.ShapeOverflow, "a");
        Add("dimension with 30 digits", F("{\"a\":" + T("U8", "[123456789012345678901234567890]", 0, 4) + "}", 4), K.ShapeOverflow, "a");
        Add("element count overflows: [2^32, 2^32, 4]", F("{\"a\":" + T("U8", "[4294967296,4294967296,4]", 0, 4) + "}", 4), K.ShapeOverflow, "a");
        Add("element count overflows: [3037000500, 3037000500]", F("{\"a\":" + T("U8", "[3037000500,3037000500]", 0, 4) + "}", 4), K.ShapeOverflow, "a");
        Add("byte size overflows: I64 [2^58]", F("{\"a\":" + T("I64", "[288230376151711744]", 0, 8) + "}", 8), K.ShapeOverflow, "a");
        Add("byte size overflows: U8 [long.MaxValue]", F("{\"a\":" + T("U8", "[9223372036854775807]", 0, 8) + "}", 8), K.ShapeOverflow, "a");
        Add("F4 with 3 elements", F("{\"a\":" + T("F4", "[3]", 0, 2) + "}", 2), K.MisalignedSize, "a");
        Add("F4 scalar", F("{\"a\":" + T("F4", "[]", 0, 1) + "}", 1), K.MisalignedSize, "a");
        Add("F6_E2M3 with 1 element", F("{\"a\":" + T("F6_E2M3", "[1]", 0, 1) + "}", 1), K.MisalignedSize, "a");
        Add("F6_E3M2 with 2 elements", F("{\"a\":" + T("F6_E3M2", "[2]", 0, 2) + "}", 2), K.MisalignedSize, "a");
        Add("F6_E2M3 with [5]", F("{\"a\":" + T("F6_E2M3", "[5]", 0, 4) + "}", 4), K.MisalignedSize, "a");

        // --- data_offsets
        static string O(string offsets) => $"{{\"a\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{offsets}}}}}";
        Add("data_offsets with 1 entry", F(O("[4]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets with 3 entries", F(O("[0,4,8]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets empty", F(O("[]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets negative begin", F(O("[-4,0]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets negative end", F(O("[0,-4]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets with a float", F(O("[0,4.0]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets with an exponent", F(O("[0,4e0]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets with a string", F(O("[0,\"4\"]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets with null", F(O("[null,4]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets over 2^63", F(O("[0,9223372036854775808]"), 4), K.InvalidOffsets, "a");
        Add("data_offsets is a string", F(O("\"0,4\""), 4), K.InvalidOffsets, "a");
        Add("data_offsets is an object", F(O("{\"begin\":0,\"end\":4}"), 4), K.InvalidOffsets, "a");
        Add("data_offsets is a number", F(O("4"), 4), K.InvalidOffsets, "a");
        Add("data_offsets is null", F(O("null"), 4), K.InvalidOffsets, "a");
        Add("data_offsets end before begin", F("{\"a\":" + T("F32", "[1]", 8, 4) + "}", 8), K.OffsetsReversed, "a");
        Add("data_offsets end before begin, zero-sized", F("{\"a\":" + T("F32", "[0]", 4, 0) + "}", 4), K.OffsetsReversed, "a");
        Add("offsets cover more bytes than the shape needs", F("{\"a\":" + T("F32", "[2]", 0, 12) + "}", 12), K.SizeMismatch, "a");
        Add("offsets cover fewer bytes than the shape needs", F("{\"a\":" + T("F32", "[2]", 0, 4) + "}", 4), K.SizeMismatch, "a");
        Add("zero-sized tensor with a non-empty range", F("{\"a\":" + T("F32", "[2,0]", 0, 4) + "}", 4), K.SizeMismatch, "a");
        Add("scalar with 8 bytes", F("{\"a\":" + T("F32", "[]", 0, 8) + "}", 8), K.SizeMismatch, "a");
        Add("F6 [4] with 4 bytes (needs 3)", F("{\"a\":" + T("F6_E3M2", "[4]", 0, 4) + "}", 4), K.SizeMismatch, "a");
        Add("size mismatch on the second tensor", F("{\"a\":" + A4 + ",\"b\":" + T("BF16", "[3]", 4, 12) + "}", 12), K.SizeMismatch, "b");

        // --- layout of the data section
        Add("hole between two tensors",
            F("{\"a\":" + A4 + ",\"b\":" + T("F32", "[1]", 8, 12) + "}", 12), K.OffsetsNotContiguous, "b");
        Add("overlapping tensors",
            F("{\"a\":" + T("F32", "[2]", 0, 8) + ",\"b\":" + T("F32", "[2]", 4, 12) + "}", 12), K.OffsetsNotContiguous, "b");
        Add("first tensor does not start at 0", F("{\"a\":" + T("F32", "[1]", 4, 8) + "}", 8), K.OffsetsNotContiguous, "a");
        Add("zero-sized tensor inside another tensor",
            F("{\"a\":" + T("F32", "[2]", 0, 8) + ",\"z\":" + T("F32", "[0]", 4, 4) + "}", 8), K.OffsetsNotContiguous, "z");
        Add("zero-sized tensor past the end",
            F("{\"a\":" + A4 + ",\"z\":" + T("F32", "[0]", 8, 8) + "}", 4), K.OffsetsNotContiguous, "z");
        Add("hole listed first in the header",
            F("{\"c\":" + T("U8", "[1]", 6, 7) + ",\"a\":" + T("U8", "[4]", 0, 4) + "}", 7), K.OffsetsNotContiguous, "c");
        Add("data section shorter than the last offset",
            F("{\"a\":" + T("F32", "[2]", 0, 8) + "}", 4), K.DataTooShort, "a");
        Add("data section shorter, two tensors",
            F("{\"b\":" + T("F16", "[2]", 4, 8) + ",\"a\":" + A4 + "}", 7), K.DataTooShort, "b");
        Add("no data section at all", F("{\"a\":" + A4 + "}", 0), K.DataTooShort, "a");
        Add("data section longer than the last offset", F("{\"a\":" + A4 + "}", 5), K.DataTooLong);
        Add("data bytes after an empty header", F("{}", 1), K.DataTooLong);
        Add("data bytes after a metadata-only header", F("{\"__metadata__\":{\"format\":\"pt\"}}", 3), K.DataTooLong);
        Add("data bytes after zero-sized tensors only", F("{\"z\":" + T("F32", "[0]", 0, 0) + "}", 2), K.DataTooLong);

        return d;
    }

    [Theory]
    [MemberData(nameof(Malformed))]
    public void Malformed_file_is_rejected_with_the_rule_it_breaks(string caseName, byte[] bytes, K kind, string? tensor)
        => AssertError(bytes, kind, tensor, caseName);

    [Fact]
    public void Malformed_cases_are_numerous_distinct_and_cover_every_header_rule()
    {
        var rows = Malformed().Select(r => ((string)r[0], (byte[])r[1], (K)r[2])).ToList();
        Assert.True(rows.Count >= 45, $"only {rows.Count} cases");
        var dupNames = rows.GroupBy(r => r.Item1).Where(g => g.Count() > 1).Select(g => g.Key).ToList();
        Assert.True(dupNames.Count == 0, "duplicate case names: " + string.Join(", ", dupNames));
        var dupBytes = rows.GroupBy(r => Hex(r.Item2)).Where(g => g.Count() > 1).Select(g => string.Join(" / ", g.Select(r => r.Item1))).ToList();
        Assert.True(dupBytes.Count == 0, "cases with identical bytes: " + string.Join("; ", dupBytes));

        // Every kind the reader of one file can raise is exercised, except HeaderNotObject, which is
        // unreachable (a header starting with '{' is either an object or invalid JSON), and the kinds
        // that belong to other layers (tensor lookup, sharded index, I/O).
        var notFromHeader = new[] { K.HeaderNotObject, K.TensorNotFound, K.InvalidIndex, K.Io, K.ChangedWhileRead };
        var missing = Enum.GetValues<K>().Except(notFromHeader).Except(rows.Select(r => r.Item3)).ToList();
        Assert.True(missing.Count == 0, "kinds without a case: " + string.Join(", ", missing));
    }

    [Fact]
    public void Missing_file_is_an_io_error()
    {
        using var dir = new TempDir();
        var path = dir.File("absent.safetensors");
        var e = Assert.Throws<SafetensorsException>(() => SafetensorsFile.Open(path));
        Assert.Equal(K.Io, e.Kind);
        Assert.Equal(path, e.FilePath);
        Assert.Null(e.Tensor);
        Assert.DoesNotContain('\n', e.Message);
    }

    /// <summary>
    /// A lone surrogate written as a JSON escape (<c>\ud800</c>) is valid UTF-8 and valid JSON
    /// syntax but cannot be decoded into a string; it must be rejected as invalid JSON like every
    /// other header error, not escape as a non-safetensors exception.
    /// </summary>
    public static TheoryData<string, byte[], K, string?> EscapedLoneSurrogates() => new()
    {
        { "escaped lone high surrogate as a tensor name", F("{\"a\\ud800\":" + A4 + "}", 4), K.InvalidJson, null },
        { "escaped lone low surrogate as a tensor name", F("{\"\\udc00\":" + A4 + "}", 4), K.InvalidJson, null },
        { "escaped reversed surrogate pair as a tensor name", F("{\"\\ude00\\ud83d\":" + A4 + "}", 4), K.InvalidJson, null },
        { "escaped lone surrogate in a dtype", F("{\"a\":" + T("F32\\ud800", "[1]", 0, 4) + "}", 4), K.InvalidJson, "a" },
        { "escaped lone surrogate as a field name in a tensor entry", F("{\"a\":{\"\\ud800\":1,\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), K.InvalidJson, "a" },
        { "escaped lone surrogate as a metadata key", F("{\"__metadata__\":{\"\\ud800\":\"x\"}}"), K.InvalidJson, "__metadata__" },
        { "escaped lone surrogate as a metadata value", F("{\"__metadata__\":{\"k\":\"\\udfff\"}}"), K.InvalidJson, "__metadata__" },
    };

    [Theory]
    [MemberData(nameof(EscapedLoneSurrogates))]
    public void Escaped_lone_surrogate_is_rejected_as_invalid_json(string caseName, byte[] bytes, K kind, string? tensor)
        => AssertError(bytes, kind, tensor, caseName);

    // ---------------------------------------------------------------- the liar header

    [Fact]
    public void Liar_header_claiming_4_TB_fails_fast_without_allocating()
    {
        using var dir = new TempDir();
        var path = dir.File("liar.safetensors");
        var bytes = F("{\"__metadata__\":{\"format\":\"pt\"},\"w\":" + T("F32", "[1000000000000]", 0, 4_000_000_000_000) + "}", 16);
        File.WriteAllBytes(path, bytes);

        // Warm up (JIT, static tables) on a different, small malformed file.
        var warm = dir.File("warm.safetensors");
        File.WriteAllBytes(warm, F("{\"w\":" + T("F32", "[2]", 0, 8) + "}", 4));
        Assert.Equal(K.DataTooShort, Assert.Throws<SafetensorsException>(() => SafetensorsFile.Open(warm)).Kind);

        var sw = Stopwatch.StartNew();
        long before = GC.GetAllocatedBytesForCurrentThread();
        SafetensorsException? caught = null;
        try { using var f = SafetensorsFile.Open(path); }
        catch (SafetensorsException e) { caught = e; }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        sw.Stop();

        Assert.NotNull(caught);
        Assert.Equal(K.DataTooShort, caught.Kind);
        Assert.Equal("w", caught.Tensor);
        Assert.Equal(path, caught.FilePath);
        Assert.Contains("4000000000000", caught.Message);
        Assert.True(allocated < 10_000_000, $"Open allocated {allocated} bytes for a 4 TB liar header");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(2), $"Open took {sw.Elapsed}");

        // The same through the in-memory path.
        before = GC.GetAllocatedBytesForCurrentThread();
        long n = SafetensorsHeader.CheckPrefix(bytes, bytes.Length, "mem");
        var e2 = Assert.Throws<SafetensorsException>(() => SafetensorsHeader.Parse(bytes.AsSpan(8, (int)n), bytes.Length - 8 - n, "mem"));
        Assert.Equal(K.DataTooShort, e2.Kind);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 10_000_000);
    }

    // ---------------------------------------------------------------- valid edge cases

    /// <summary>(case name, file bytes, expected tensors in data order, expected metadata).</summary>
    public static TheoryData<string, byte[], string, string> Valid()
    {
        var d = new TheoryData<string, byte[], string, string>();

        var padded = "{\"a\":" + T("F32", "[2]", 0, 8) + "}";
        var padTo8 = padded + new string(' ', (8 - padded.Length % 8) % 8 == 0 ? 8 : (8 - padded.Length % 8));
        Assert.Equal(0, padTo8.Length % 8);
        d.Add("header padded with spaces to a multiple of 8", F(padTo8, 8), "a|F32|[2]|0-8", "");
        d.Add("header padded with JSON whitespace", F("{}\t\r\n  "), "", "");
        // The reference reader accepts JSON whitespace before the '{' too (writers may pad at the front).
        d.Add("header starts with a space", F(" {}"), "", "");
        d.Add("header starts with a newline", F("\n{}"), "", "");
        d.Add("header led by every JSON whitespace, then a tensor", F(" \t\r\n{\"a\":" + A4 + "}", 4), "a|F32|[1]|0-4", "");
        d.Add("header padded at the front to a multiple of 8", F(new string(' ', 8 - padded.Length % 8) + padded, 8), "a|F32|[2]|0-8", "");
        d.Add("empty header {} and no data", F("{}"), "", "");
        d.Add("empty header {} padded to 8 bytes", F("{}      "), "", "");
        d.Add("metadata only", F("{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x y\"}}"), "", "format=pt, note=x y");
        d.Add("empty metadata object", F("{\"__metadata__\":{}}"), "", "");
        d.Add("null metadata", F("{\"__metadata__\":null,\"a\":" + A4 + "}", 4), "a|F32|[1]|0-4", "");
        d.Add("metadata with an empty-string value and an empty key", F("{\"__metadata__\":{\"empty\":\"\",\"\":\"v\"}}"), "", "=v, empty=");
        d.Add("metadata after the tensors", F("{\"a\":" + A4 + ",\"__metadata__\":{\"k\":\"v\"}}", 4), "a|F32|[1]|0-4", "k=v");
        d.Add("metadata with dtype-like keys holding strings", F("{\"__metadata__\":{\"dtype\":\"F32\"}}"), "", "dtype=F32");
        d.Add("zero-sized tensors among others",
            F("{\"z1\":" + T("F32", "[0]", 0, 0) + ",\"a\":" + T("F32", "[2]", 0, 8) + ",\"z2\":" + T("BF16", "[2,0]", 8, 8)
              + ",\"b\":" + T("U8", "[3]", 8, 11) + ",\"z3\":" + T("I64", "[0,5,7]", 11, 11) + "}", 11),
            "z1|F32|[0]|0-0; a|F32|[2]|0-8; z2|BF16|[2, 0]|8-8; b|U8|[3]|8-11; z3|I64|[0, 5, 7]|11-11", "");
        d.Add("only a zero-sized tensor", F("{\"z\":" + T("F64", "[0]", 0, 0) + "}"), "z|F64|[0]|0-0", "");
        d.Add("zero dimension before a huge one", F("{\"z\":" + T("U8", "[0,9223372036854775807]", 0, 0) + "}"), "z|U8|[0, 9223372036854775807]|0-0", "");
        d.Add("scalar F32", F("{\"s\":" + T("F32", "[]", 0, 4) + "}", 4), "s|F32|[]|0-4", "");
        d.Add("many unit dimensions", F("{\"u\":" + T("F16", "[1,1,1,1,1,1,1,1]", 0, 2) + "}", 2), "u|F16|[1, 1, 1, 1, 1, 1, 1, 1]|0-2", "");

        var all = new StringBuilder("{");
        var allExpected = new List<string>();
        long at = 0;
        foreach (var dt in Enum.GetValues<DType>())
        {
            var (shape, shapeText, bytes) = ShapeFor(dt);
            d.Add($"dtype {dt}", F("{\"t\":" + T(dt.ToString(), shape, 0, bytes) + "}", bytes), $"t|{dt}|{shapeText}|0-{bytes}", "");
            if (at > 0) all.Append(',');
            all.Append($"\"{dt}\":").Append(T(dt.ToString(), shape, at, at + bytes));
            allExpected.Add($"{dt}|{dt}|{shapeText}|{at}-{at + bytes}");
            at += bytes;
        }
        d.Add("every dtype in one file", F(all.Append('}').ToString(), at), string.Join("; ", allExpected), "");

        d.Add("unknown extra fields are skipped",
            F("{\"a\":{\"extra\":{\"x\":[1,{\"y\":null}]},\"dtype\":\"F32\",\"n\":1.5,\"shape\":[1],\"s\":\"str\",\"data_offsets\":[0,4],\"t\":true}}", 4),
            "a|F32|[1]|0-4", "");
        d.Add("fields in a different order", F("{\"a\":{\"data_offsets\":[0,6],\"shape\":[3],\"dtype\":\"I16\"}}", 6), "a|I16|[3]|0-6", "");
        d.Add("tensors listed out of offset order",
            F("{\"c\":" + T("U8", "[2]", 12, 14) + ",\"a\":" + T("F32", "[2]", 0, 8) + ",\"b\":" + T("F16", "[2]", 8, 12) + "}", 14),
            "a|F32|[2]|0-8; b|F16|[2]|8-12; c|U8|[2]|12-14", "");
        d.Add("escaped characters in names",
            F("{\"a\\u00e9\\\"b\":" + T("U8", "[1]", 0, 1) + ",\"tab\\tslash\\/back\\\\\":" + T("U8", "[1]", 1, 2)
              + ",\"\\ud83d\\ude00\":" + T("U8", "[1]", 2, 3) + "}", 3),
            "a\u00e9\"b|U8|[1]|0-1; tab\tslash/back\\|U8|[1]|1-2; \U0001F600|U8|[1]|2-3", "");
        d.Add("raw multi-byte UTF-8 names", F("{\"poids.é\":" + T("U8", "[1]", 0, 1) + ",\"名前\":" + T("U8", "[1]", 1, 2) + "}", 2),
            "poids.é|U8|[1]|0-1; 名前|U8|[1]|1-2", "");
        d.Add("empty tensor name", F("{\"\":" + A4 + "}", 4), "|F32|[1]|0-4", "");
        d.Add("pretty-printed header",
            F("{\n  \"__metadata__\": { \"format\": \"pt\" },\n  \"a\": {\n    \"dtype\": \"F32\",\n    \"shape\": [ 1, 2 ],\n    \"data_offsets\": [ 0, 8 ]\n  }\n}\n", 8),
            "a|F32|[1, 2]|0-8", "format=pt");
        d.Add("large offsets with zero-sized tail", F("{\"a\":" + T("U8", "[1000]", 0, 1000) + ",\"z\":" + T("U8", "[0]", 1000, 1000) + "}", 1000),
            "a|U8|[1000]|0-1000; z|U8|[0]|1000-1000", "");
        return d;
    }

    private static (string Shape, string ShapeText, long Bytes) ShapeFor(DType dt) => dt switch
    {
        DType.F4 => ("[2,3]", "[2, 3]", 3),
        DType.F6_E2M3 or DType.F6_E3M2 => ("[4]", "[4]", 3),
        _ => ("[2,3]", "[2, 3]", 6 * dt.Bits() / 8),
    };

    [Theory]
    [MemberData(nameof(Valid))]
    public void Valid_edge_case_is_accepted(string caseName, byte[] bytes, string tensors, string metadata)
    {
        using var dir = new TempDir();
        var path = dir.File("valid.safetensors");
        File.WriteAllBytes(path, bytes);
        using var f = SafetensorsFile.Open(path);
        Assert.True(tensors == Describe(f.Tensors), $"{caseName}: tensors\n expected {tensors}\n actual   {Describe(f.Tensors)}");
        Assert.True(metadata == Describe(f.Metadata), $"{caseName}: metadata\n expected {metadata}\n actual   {Describe(f.Metadata)}");
        long headerLength = (long)BitConverter.ToUInt64(bytes, 0);
        Assert.Equal(8 + headerLength, f.DataStart);
        Assert.Equal(bytes.Length, f.FileLength);
        Assert.Equal(bytes.Length - 8 - headerLength, f.Header.DataLength);
        Assert.Equal(f.Header.DataLength, f.Tensors.Sum(t => t.ByteLength));
        foreach (var t in f.Tensors)
        {
            Assert.True(f.TryGet(t.Name, out var same));
            Assert.Same(t, same);
            Assert.Equal(t.DType.ByteSize(t.ElementCount), t.ByteLength);
        }
        var miss = Assert.Throws<SafetensorsException>(() => f.Get("no such tensor"));
        Assert.Equal(K.TensorNotFound, miss.Kind);
    }

    [Fact]
    public void Valid_data_bytes_read_back()
    {
        using var dir = new TempDir();
        var path = dir.File("read.safetensors");
        var bytes = F("{\"b\":" + T("U8", "[3]", 4, 7) + ",\"s\":" + T("F32", "[]", 0, 4) + ",\"z\":" + T("U8", "[0]", 7, 7) + "}", 7);
        File.WriteAllBytes(path, bytes);
        using var f = SafetensorsFile.Open(path);
        var b = new byte[3];
        f.ReadBytes(f.Get("b"), 0, b);
        long dataStart = bytes.Length - 7;
        Assert.Equal(bytes.AsSpan((int)dataStart + 4, 3).ToArray(), b);
        var s = new byte[4];
        f.ReadBytes(f.Get("s"), 0, s);
        Assert.Equal(bytes.AsSpan((int)dataStart, 4).ToArray(), s);
        Assert.Equal(0, f.Get("z").ByteLength);
    }

    // ---------------------------------------------------------------- fuzz

    private const string FuzzPath = "fuzz.safetensors";

    /// <summary>The valid small file the mutations start from.</summary>
    private static byte[] FuzzSeed() => StBytes.Make(
        "{\"__metadata__\":{\"format\":\"pt\"},\"w\":" + T("F32", "[2,2]", 0, 16) + ",\"b\":" + T("BF16", "[3]", 16, 22)
        + ",\"z\":" + T("F4", "[0]", 22, 22) + ",\"s\":" + T("U8", "[]", 22, 23) + "}  ", 23);

    private static readonly byte[] JsonAlphabet = Encoding.ASCII.GetBytes("{}[]\":,-.0123456789eE \\u\"\"\"{}[],:: adtypeshp_F32BU8I6");

    private static readonly string[] JsonTokens =
    [
        "{", "}", "[", "]", ",", ":", "\"", " ", "\"a\"", "\"b\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"",
        "\"F32\"", "\"F4\"", "\"F6_E2M3\"", "\"I64\"", "\"BF16\"", "\"U8\"", "0", "1", "4", "8", "-1", "-0", "2.5", "1e3",
        "9223372036854775807", "9223372036854775808", "4294967296", "null", "true", "\"\"", "\"\\u00e9\"", "\"\\ud800\"", "\\",
    ];

    private static readonly string[] JsonEscapes =
    [
        "\\n", "\\\"", "\\\\", "\\/", "\\u0000", "\\u00e9", "\\u0041", "\\ud83d\\ude00", "\\ud800", "\\udfff", "\\ude00\\ud83d", "\\x41", "\\u12",
    ];

    /// <summary>Random inputs: pure noise, plausible prefix + '{' + noise, JSON-alphabet noise and JSON-token soup.</summary>
    private static List<byte[]> RandomInputs(int count)
    {
        var rnd = new Random(12345);
        var list = new List<byte[]>(count);
        for (int i = 0; i < count; i++)
        {
            int len = rnd.Next(0, 301);
            var b = new byte[len];
            switch (i % 4)
            {
                case 0:
                    rnd.NextBytes(b);
                    break;
                case 1:
                    rnd.NextBytes(b);
                    PlausiblePrefix(b, rnd);
                    break;
                case 2:
                    for (int j = 0; j < len; j++) b[j] = JsonAlphabet[rnd.Next(JsonAlphabet.Length)];
                    PlausiblePrefix(b, rnd);
                    break;
                default:
                    // JSON-token soup after '{', exact prefix, total length still len (at least 9).
                    int data = Math.Min(rnd.Next(0, 40), len / 4);
                    int target = Math.Max(1, len - 8 - data);
                    var sb = new StringBuilder("{");
                    while (true)
                    {
                        var tok = JsonTokens[rnd.Next(JsonTokens.Length)];
                        if (sb.Length + tok.Length > target) break;
                        sb.Append(tok);
                    }
                    if (sb.Length < target && rnd.Next(2) == 0) sb.Append('}');
                    b = StBytes.Make(sb.ToString(), data);
                    break;
            }
            list.Add(b);
        }
        return list;
    }

    /// <summary>Writes a length prefix pointing inside the buffer and a '{' where the header starts.</summary>
    private static void PlausiblePrefix(byte[] b, Random rnd)
    {
        if (b.Length < 9) return;
        int n = rnd.Next(1, b.Length - 8 + 1);
        BitConverter.TryWriteBytes(b, (ulong)n);
        b[8] = (byte)'{';
        if (rnd.Next(2) == 0) b[8 + n - 1] = (byte)'}';
    }

    /// <summary>Random single- and multi-byte mutations of <see cref="FuzzSeed"/>.</summary>
    private static List<byte[]> Mutations(int count)
    {
        var seed = FuzzSeed();
        int headerEnd = 8 + (int)BitConverter.ToUInt64(seed, 0);
        var rnd = new Random(12345);
        var list = new List<byte[]>(count);
        for (int i = 0; i < count; i++)
        {
            var b = (byte[])seed.Clone();
            // Mostly mutate the header (where the validation is); sometimes anywhere.
            int Pos(int len) => rnd.Next(4) == 0 ? rnd.Next(len) : 8 + rnd.Next(Math.Max(1, Math.Min(len, headerEnd) - 8));
            switch (rnd.Next(8))
            {
                case 0: // one random byte
                    b[Pos(b.Length)] = (byte)rnd.Next(256);
                    break;
                case 1: // one byte from the JSON alphabet
                    b[Pos(b.Length)] = JsonAlphabet[rnd.Next(JsonAlphabet.Length)];
                    break;
                case 2: // one bit
                    b[Pos(b.Length)] ^= (byte)(1 << rnd.Next(8));
                    break;
                case 3: // several random bytes
                    for (int k = rnd.Next(2, 9); k > 0; k--) b[Pos(b.Length)] = (byte)rnd.Next(256);
                    break;
                case 4: // insert bytes, keeping the prefix consistent when inside the header
                    {
                        int at = Pos(b.Length), k = rnd.Next(1, 5);
                        var ins = new byte[k];
                        for (int j = 0; j < k; j++) ins[j] = rnd.Next(2) == 0 ? (byte)rnd.Next(256) : JsonAlphabet[rnd.Next(JsonAlphabet.Length)];
                        b = [.. b.AsSpan(0, at), .. ins, .. b.AsSpan(at)];
                        if (at >= 8 && at < headerEnd && rnd.Next(3) != 0) BitConverter.TryWriteBytes(b, (ulong)(headerEnd - 8 + k));
                        break;
                    }
                case 5: // delete a range, keeping the prefix consistent when inside the header
                    {
                        int at = Pos(b.Length), k = Math.Min(rnd.Next(1, 6), b.Length - at);
                        b = [.. b.AsSpan(0, at), .. b.AsSpan(at + k)];
                        if (at >= 8 && at + k <= headerEnd && rnd.Next(3) != 0) BitConverter.TryWriteBytes(b, (ulong)(headerEnd - 8 - k));
                        break;
                    }
                case 6: // insert a JSON escape sequence into the header (often inside a string), prefix kept consistent
                    {
                        int at = 8 + rnd.Next(headerEnd - 8);
                        var ins = Encoding.ASCII.GetBytes(JsonEscapes[rnd.Next(JsonEscapes.Length)]);
                        b = [.. b.AsSpan(0, at), .. ins, .. b.AsSpan(at)];
                        BitConverter.TryWriteBytes(b, (ulong)(headerEnd - 8 + ins.Length));
                        break;
                    }
                default: // truncate
                    b = b.AsSpan(0, rnd.Next(b.Length)).ToArray();
                    break;
            }
            list.Add(b);
        }
        return list;
    }

    /// <summary>The in-memory equivalent of <see cref="SafetensorsFile.Open"/>: prefix check, then header parse.</summary>
    private static SafetensorsHeader ParseInMemory(byte[] b, string path)
    {
        long n = SafetensorsHeader.CheckPrefix(b, b.Length, path);
        return SafetensorsHeader.Parse(b.AsSpan(8, (int)n), b.Length - 8 - n, path);
    }

    /// <summary>What an accepted header must satisfy: tensors tile the data section from 0 with the right sizes.</summary>
    private static string? Invariant(SafetensorsHeader h)
    {
        long at = 0;
        foreach (var t in h.Tensors)
        {
            if (t.Begin != at) return $"{t.Name} begins at {t.Begin}, expected {at}";
            if (t.DType.ByteSize(t.ElementCount) != t.ByteLength) return $"{t.Name} size {t.ByteLength} does not match its shape";
            if (t.Shape.Any(x => x < 0)) return $"{t.Name} has a negative dimension";
            at = t.End;
        }
        return at == h.DataLength ? null : $"tensors end at {at}, data is {h.DataLength} bytes";
    }

    private sealed class FuzzTally
    {
        public int Accepted, Rejected;
        public readonly HashSet<K> Kinds = [];
        public readonly List<string> Failures = [];
        public readonly SortedDictionary<string, int> Causes = new(StringComparer.Ordinal);

        public void Fail(string what, int index, byte[] b, string why)
        {
            Causes[why] = Causes.GetValueOrDefault(why) + 1;
            if (Failures.Count < 10) Failures.Add($"{what} #{index}: {why}; bytes {Hex(b)}");
            else if (Failures.Count == 10) Failures.Add("...");
        }
    }

    private static void RunInMemory(string what, List<byte[]> inputs, FuzzTally tally)
    {
        for (int i = 0; i < inputs.Count; i++)
        {
            var b = inputs[i];
            try
            {
                var h = ParseInMemory(b, "mem");
                tally.Accepted++;
                if (Invariant(h) is { } broken) tally.Fail(what, i, b, "accepted but " + broken);
            }
            catch (SafetensorsException e)
            {
                tally.Rejected++;
                tally.Kinds.Add(e.Kind);
                if (e.FilePath != "mem") tally.Fail(what, i, b, $"FilePath {e.FilePath}");
            }
            catch (Exception e)
            {
                tally.Fail(what, i, b, $"{e.GetType().FullName}: {e.Message}");
            }
        }
    }

    private static void RunOnFiles(string what, List<byte[]> inputs, string path, FuzzTally tally)
    {
        for (int i = 0; i < inputs.Count; i++)
        {
            var b = inputs[i];
            File.WriteAllBytes(path, b);
            try
            {
                using var f = SafetensorsFile.Open(path);
                tally.Accepted++;
                if (Invariant(f.Header) is { } broken) tally.Fail(what, i, b, "accepted but " + broken);
            }
            catch (SafetensorsException e)
            {
                tally.Rejected++;
                tally.Kinds.Add(e.Kind);
                if (e.FilePath != path) tally.Fail(what, i, b, $"FilePath {e.FilePath}");
            }
            catch (Exception e)
            {
                tally.Fail(what, i, b, $"{e.GetType().FullName}: {e.Message}");
            }
        }
    }

    [Fact]
    public void Fuzz_random_bytes_and_mutations_raise_only_safetensors_exceptions()
    {
        var sw = Stopwatch.StartNew();
        var seed = FuzzSeed();
        Assert.Null(Invariant(ParseInMemory(seed, "mem")));

        var random = RandomInputs(2000);
        var mutated = Mutations(2000);

        var tally = new FuzzTally();
        RunInMemory("random", random, tally);
        RunInMemory("mutation", mutated, tally);

        using var dir = new TempDir();
        var path = dir.File(FuzzPath);
        var fileTally = new FuzzTally();
        RunOnFiles("random (file)", random.Take(100).ToList(), path, fileTally);
        RunOnFiles("mutation (file)", mutated.Take(100).ToList(), path, fileTally);
        sw.Stop();

        output.WriteLine($"in memory: {tally.Accepted} accepted, {tally.Rejected} rejected, kinds {string.Join(", ", tally.Kinds.Order())}");
        output.WriteLine($"files: {fileTally.Accepted} accepted, {fileTally.Rejected} rejected; {sw.ElapsedMilliseconds} ms");
        var failures = tally.Failures.Concat(fileTally.Failures).ToList();
        var causes = tally.Causes.Concat(fileTally.Causes).GroupBy(kv => kv.Key).Select(g => $"{g.Sum(kv => kv.Value)} x {g.Key}");
        Assert.True(failures.Count == 0, "causes:\n" + string.Join("\n", causes) + "\nfirst cases:\n" + string.Join("\n", failures));
        Assert.Equal(4000, tally.Accepted + tally.Rejected);
        Assert.Equal(200, fileTally.Accepted + fileTally.Rejected);
        // The inputs reach well past the prefix checks: many different rules fire.
        Assert.True(tally.Kinds.Count >= 10, "kinds seen: " + string.Join(", ", tally.Kinds.Order()));
        Assert.Contains(K.InvalidJson, tally.Kinds);
        Assert.Contains(K.HeaderStart, tally.Kinds);
        Assert.True(tally.Rejected > 3000, $"only {tally.Rejected} rejected");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"fuzz took {sw.Elapsed}");
    }

    [Fact]
    public void Fuzz_file_and_in_memory_paths_agree()
    {
        var inputs = RandomInputs(2000).Where((_, i) => i % 20 == 1).Concat(Mutations(2000).Where((_, i) => i % 20 == 3)).ToList();
        using var dir = new TempDir();
        var path = dir.File(FuzzPath);
        var diffs = new List<string>();
        for (int i = 0; i < inputs.Count; i++)
        {
            var b = inputs[i];
            string Outcome(Func<SafetensorsHeader> open)
            {
                try { return "ok " + Describe(open().Tensors); }
                catch (SafetensorsException e) { return $"{e.Kind} {e.Tensor}"; }
                catch (Exception e) { return e.GetType().Name; }
            }
            File.WriteAllBytes(path, b);
            var mem = Outcome(() => ParseInMemory(b, path));
            var file = Outcome(() => { using var f = SafetensorsFile.Open(path); return f.Header; });
            if (mem != file) diffs.Add($"#{i}: memory {mem}, file {file}; bytes {Hex(b)}");
        }
        Assert.Equal(200, inputs.Count);
        Assert.True(diffs.Count == 0, string.Join("\n", diffs.Take(10)));
    }
}
