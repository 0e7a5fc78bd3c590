namespace CopaKernels.Formats.Safetensors;

/// <summary>One tensor of a safetensors file: name, type, shape and its byte range in the data section.</summary>
/// <param name="Name">Tensor name (header key).</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions; empty for a scalar.</param>
/// <param name="Begin">First byte, relative to the start of the data section.</param>
/// <param name="End">One past the last byte, relative to the start of the data section.</param>
public sealed record TensorInfo(string Name, DType DType, long[] Shape, long Begin, long End)
{
    /// <summary>Number of elements (1 for a scalar).</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Shape) n *= d;
            return n;
        }
    }

    /// <summary>Size of the data in bytes.</summary>
    public long ByteLength => End - Begin;

    /// <summary>Rows of a 2-D tensor.</summary>
    public long Rows => Shape.Length == 2 ? Shape[0] : throw new InvalidOperationException($"{Name} is not 2-D");

    /// <summary>Columns of a 2-D tensor.</summary>
    public long Cols => Shape.Length == 2 ? Shape[1] : throw new InvalidOperationException($"{Name} is not 2-D");

    /// <summary>The shape written as <c>[a, b]</c>.</summary>
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>A tensor to be written: name, type and shape (the writer computes the offsets).</summary>
/// <param name="Name">Tensor name.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions.</param>
public sealed record TensorSpec(string Name, DType DType, long[] Shape)
{
    /// <summary>Number of elements.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, d) => checked(a * d));

    /// <summary>Size in bytes.</summary>
    public long ByteLength => DType.ByteSize(ElementCount) ?? throw new OverflowException($"{Name}: size overflows");
}
