namespace CopaKernels.Kernels;

// The kernel calls address buffers in F32 elements, as TensorRange does; only the transfers
// (Allocate, Upload, Download and their queued forms) count bytes, because a buffer may hold
// BF16 or F16 as well. KernelTransfers gives element-typed forms of the transfers.

/// <summary>F32 elements of a buffer from an element offset; the call says how many.</summary>
/// <param name="Buffer">The buffer (owned by the backend that is called).</param>
/// <param name="Offset">First element (F32 index into the buffer).</param>
public readonly record struct BufferView(KernelBuffer Buffer, long Offset);

/// <summary>A <paramref name="Rows"/> × <paramref name="Cols"/> row-major F32 matrix inside a buffer.</summary>
/// <param name="Buffer">The buffer (owned by the backend that is called).</param>
/// <param name="Offset">Element [0, 0] (F32 index into the buffer).</param>
/// <param name="Rows">Number of rows.</param>
/// <param name="Cols">Number of columns (the row stride: rows are contiguous).</param>
public readonly record struct MatrixView(KernelBuffer Buffer, long Offset, int Rows, int Cols)
{
    /// <summary>Number of elements, Rows · Cols.</summary>
    public long Length => (long)Rows * Cols;
}

/// <summary>
/// The thresholded half of <see cref="IMergeBackend.RowAbsSums"/>: the magnitude threshold t from a selection,
/// where to write each row's Σ|x|·[|x| ≥ t], and whether to zero the entries below t in place.
/// </summary>
/// <param name="Value">The threshold t; compared as |x| ≥ |t|, bit for bit as selection compares.</param>
/// <param name="MaskedSums">Where the rows' masked sums go (one F32 per row), or null to skip them.</param>
/// <param name="ZeroBelow">Whether entries with |x| &lt; t are set to +0 in the same pass.</param>
public readonly record struct RowThreshold(float Value, BufferView? MaskedSums = null, bool ZeroBelow = false);
