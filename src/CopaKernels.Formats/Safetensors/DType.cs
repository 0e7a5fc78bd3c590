namespace CopaKernels.Formats.Safetensors;

/// <summary>The element types of the safetensors format (the reference implementation's list).</summary>
public enum DType
{
    /// <summary>Boolean, one byte.</summary>
    BOOL,
    /// <summary>4-bit float (E2M1), two per byte.</summary>
    F4,
    /// <summary>6-bit float E2M3.</summary>
    F6_E2M3,
    /// <summary>6-bit float E3M2.</summary>
    F6_E3M2,
    /// <summary>Unsigned 8-bit integer.</summary>
    U8,
    /// <summary>Signed 8-bit integer.</summary>
    I8,
    /// <summary>8-bit float E5M2.</summary>
    F8_E5M2,
    /// <summary>8-bit float E4M3.</summary>
    F8_E4M3,
    /// <summary>8-bit exponent-only scale E8M0.</summary>
    F8_E8M0,
    /// <summary>Signed 16-bit integer.</summary>
    I16,
    /// <summary>Unsigned 16-bit integer.</summary>
    U16,
    /// <summary>IEEE half precision.</summary>
    F16,
    /// <summary>bfloat16.</summary>
    BF16,
    /// <summary>Signed 32-bit integer.</summary>
    I32,
    /// <summary>Unsigned 32-bit integer.</summary>
    U32,
    /// <summary>IEEE single precision.</summary>
    F32,
    /// <summary>Complex of two F32.</summary>
    C64,
    /// <summary>IEEE double precision.</summary>
    F64,
    /// <summary>Signed 64-bit integer.</summary>
    I64,
    /// <summary>Unsigned 64-bit integer.</summary>
    U64,
}

/// <summary>Facts about <see cref="DType"/> values.</summary>
public static class DTypes
{
    /// <summary>
    /// The name used in safetensors headers (the member's name): a switch, not <see cref="Enum.ToString()"/>,
    /// whose reflection runs at every start of the tool.
    /// </summary>
    public static string Name(this DType d) => d switch
    {
        DType.BOOL => "BOOL", DType.F4 => "F4", DType.F6_E2M3 => "F6_E2M3", DType.F6_E3M2 => "F6_E3M2",
        DType.U8 => "U8", DType.I8 => "I8", DType.F8_E5M2 => "F8_E5M2", DType.F8_E4M3 => "F8_E4M3",
        DType.F8_E8M0 => "F8_E8M0", DType.I16 => "I16", DType.U16 => "U16", DType.F16 => "F16",
        DType.BF16 => "BF16", DType.I32 => "I32", DType.U32 => "U32", DType.F32 => "F32",
        DType.C64 => "C64", DType.F64 => "F64", DType.I64 => "I64", DType.U64 => "U64",
        _ => throw new ArgumentOutOfRangeException(nameof(d)),
    };

    /// <summary>Size of one element in bits.</summary>
    public static int Bits(this DType d) => d switch
    {
        DType.F4 => 4,
        DType.F6_E2M3 or DType.F6_E3M2 => 6,
        DType.BOOL or DType.U8 or DType.I8 or DType.F8_E5M2 or DType.F8_E4M3 or DType.F8_E8M0 => 8,
        DType.I16 or DType.U16 or DType.F16 or DType.BF16 => 16,
        DType.I32 or DType.U32 or DType.F32 => 32,
        DType.C64 or DType.F64 or DType.I64 or DType.U64 => 64,
        _ => throw new ArgumentOutOfRangeException(nameof(d)),
    };

    /// <summary>True for the float types the merge computes on (read as F32, written back rounded).</summary>
    public static bool IsMergeFloat(this DType d) => d is DType.F32 or DType.F16 or DType.BF16;

    /// <summary><paramref name="d"/> when it is one of the two 16-bit float types (BF16, F16), which the kernels can work on as stored; else null.</summary>
    public static DType? As16BitFloat(this DType d) => d is DType.BF16 or DType.F16 ? d : null;

    /// <summary>Bytes per element of a merge float type (F32 4, BF16 and F16 2).</summary>
    public static int Size(this DType d) => d.IsMergeFloat() ? d.Bits() / 8
        : throw new ArgumentOutOfRangeException(nameof(d), d, "not a merge float type (F32, BF16, F16)");

    /// <summary>Parses the exact upper-case name used in safetensors headers.</summary>
    public static bool TryParse(string name, out DType dtype)
    {
        DType? d = name switch
        {
            "BOOL" => DType.BOOL, "F4" => DType.F4, "F6_E2M3" => DType.F6_E2M3, "F6_E3M2" => DType.F6_E3M2,
            "U8" => DType.U8, "I8" => DType.I8, "F8_E5M2" => DType.F8_E5M2, "F8_E4M3" => DType.F8_E4M3,
            "F8_E8M0" => DType.F8_E8M0, "I16" => DType.I16, "U16" => DType.U16, "F16" => DType.F16,
            "BF16" => DType.BF16, "I32" => DType.I32, "U32" => DType.U32, "F32" => DType.F32,
            "C64" => DType.C64, "F64" => DType.F64, "I64" => DType.I64, "U64" => DType.U64,
            _ => null,
        };
        dtype = d.GetValueOrDefault();
        return d.HasValue;
    }

    /// <summary>Parses a user-facing name (<c>bf16</c>, <c>F16</c>, <c>float32</c>...).</summary>
    public static bool TryParseUser(string name, out DType dtype)
    {
        switch (name.ToLowerInvariant())
        {
            case "bf16" or "bfloat16": dtype = DType.BF16; return true;
            case "f16" or "fp16" or "float16" or "half": dtype = DType.F16; return true;
            case "f32" or "fp32" or "float32" or "float": dtype = DType.F32; return true;
            default: return TryParse(name.ToUpperInvariant(), out dtype);
        }
    }

    /// <summary>Byte size of <paramref name="elements"/> elements, or null when it overflows or is not whole bytes.</summary>
    public static long? ByteSize(this DType d, long elements)
    {
        long bits;
        try { bits = checked(elements * d.Bits()); }
        catch (OverflowException) { return null; }
        return bits % 8 == 0 ? bits / 8 : null;
    }
}
