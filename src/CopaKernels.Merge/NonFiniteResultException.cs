namespace CopaKernels.Merge;

/// <summary>
/// A value of a merged tensor came out NaN or ±Inf where its inputs were finite: the merge's parameters or
/// scales took it past what F32 (or the output dtype) can hold. Raised where results are encoded or
/// checked; <see cref="Streaming.MergeRunner"/> turns it into an input error naming the module and the
/// parameters in effect (or the input that held NaN or Inf, when one did).
/// </summary>
/// <param name="tensor">The output tensor.</param>
/// <param name="index">Element index in the tensor (row-major), or −1 when unknown.</param>
/// <param name="columns">Columns of the tensor, for the row and column of <paramref name="index"/>.</param>
/// <param name="dtype">The type it was stored as (F32, BF16, F16).</param>
internal sealed class NonFiniteResultException(string tensor, long index, long columns, string dtype)
    : Exception($"{tensor}: a merged value is NaN or Inf in {dtype}")
{
    /// <summary>The output tensor.</summary>
    public string Tensor { get; } = tensor;

    /// <summary>The stored type.</summary>
    public string DType { get; } = dtype;

    /// <summary>Where, in words ("at row 3, column 17"), or empty.</summary>
    public string Where => index < 0 ? "" : columns > 0 ? $" at row {index / columns}, column {index % columns}" : $" at element {index}";
}
