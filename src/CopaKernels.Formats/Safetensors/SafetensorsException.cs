namespace CopaKernels.Formats.Safetensors;

/// <summary>Why a safetensors file (or a sharded index) was rejected. One kind per validation rule.</summary>
public enum SafetensorsErrorKind
{
    /// <summary>The file is shorter than the 8-byte header length prefix.</summary>
    FileTooSmall,
    /// <summary>The declared header length exceeds <see cref="SafetensorsHeader.MaxHeaderSize"/>.</summary>
    HeaderTooLarge,
    /// <summary>The declared header length runs past the end of the file.</summary>
    HeaderPastEnd,
    /// <summary>The header is not valid UTF-8.</summary>
    HeaderNotUtf8,
    /// <summary>The header does not start with <c>{</c> (after any JSON whitespace: space, tab, CR, LF).</summary>
    HeaderStart,
    /// <summary>The header is not valid JSON, or has bytes after the JSON object other than spaces.</summary>
    InvalidJson,
    /// <summary>The header is JSON but not an object.</summary>
    HeaderNotObject,
    /// <summary>A key appears twice in the header.</summary>
    DuplicateKey,
    /// <summary><c>__metadata__</c> is not an object of strings (or is a tensor).</summary>
    InvalidMetadata,
    /// <summary>A tensor entry is not an object with dtype, shape and data_offsets of the right JSON types.</summary>
    InvalidTensorEntry,
    /// <summary>The dtype is not one the format defines.</summary>
    UnknownDType,
    /// <summary>A dimension is not an integer.</summary>
    InvalidShape,
    /// <summary>A dimension is negative.</summary>
    NegativeDimension,
    /// <summary>Element count or byte size overflows 64-bit arithmetic.</summary>
    ShapeOverflow,
    /// <summary>Element count times element bits is not a whole number of bytes.</summary>
    MisalignedSize,
    /// <summary>data_offsets is not exactly two non-negative integers.</summary>
    InvalidOffsets,
    /// <summary>data_offsets end is before begin.</summary>
    OffsetsReversed,
    /// <summary>The byte range size differs from element count times element size.</summary>
    SizeMismatch,
    /// <summary>Tensor byte ranges leave a hole or overlap (they must tile the data section from 0).</summary>
    OffsetsNotContiguous,
    /// <summary>The data section is shorter than the last offset.</summary>
    DataTooShort,
    /// <summary>The data section is longer than the last offset.</summary>
    DataTooLong,
    /// <summary>A requested tensor is not in the file.</summary>
    TensorNotFound,
    /// <summary>A sharded model's index is malformed or disagrees with its shards.</summary>
    InvalidIndex,
    /// <summary>Reading or writing failed at the operating-system level.</summary>
    Io,
    /// <summary>The file was written to or replaced after it was opened (<see cref="SafetensorsFile.CheckUnchanged"/>).</summary>
    ChangedWhileRead,
}

/// <summary>The one exception type of the safetensors layer: a kind, the file, and the tensor when there is one.</summary>
public sealed class SafetensorsException : CopaInputException
{
    /// <summary>Creates the exception.</summary>
    public SafetensorsException(SafetensorsErrorKind kind, string? path, string? tensor, string reason, Exception? inner = null)
        : base(path, tensor, reason, inner) => Kind = kind;

    /// <summary>Which rule was broken.</summary>
    public SafetensorsErrorKind Kind { get; }
}
