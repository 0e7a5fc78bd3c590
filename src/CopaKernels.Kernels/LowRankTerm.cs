using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Kernels;

/// <summary>
/// One task's factors in a low-rank product: B (d_out × r, row-major F32) and A (r × d_in, row-major
/// F32), with a per-rank-index coefficient <c>Factor · Scale[i]</c> (Scale absent means 1). A list of
/// terms is one product with inner dimension Σ r_n: <c>Σ_n B_n · diag(Factor_n · Scale_n) · A_n</c>.
/// </summary>
/// <param name="B">Buffer holding B.</param>
/// <param name="BOffset">F32 element offset of B[0,0].</param>
/// <param name="A">Buffer holding A.</param>
/// <param name="AOffset">F32 element offset of A[0,0].</param>
/// <param name="Rank">r.</param>
/// <param name="Factor">Scalar coefficient (e.g. λ·s_n).</param>
/// <param name="Scale">Optional buffer of r F32 coefficients (e.g. S̃_n).</param>
/// <param name="ScaleOffset">F32 element offset of Scale[0].</param>
public readonly record struct LowRankTerm(
    KernelBuffer B, long BOffset, KernelBuffer A, long AOffset, int Rank, float Factor = 1f,
    KernelBuffer? Scale = null, long ScaleOffset = 0);

/// <summary>
/// Where a product tile goes: rows [RowStart, RowStart + RowCount) of the d_out × d_in result are
/// written row-major to <see cref="Output"/> (RowCount × d_in elements of <see cref="OutputType"/>),
/// optionally added to a base tile of the same shape first (W + ΔW computed in F32, rounded once).
/// </summary>
/// <param name="RowStart">First output row.</param>
/// <param name="RowCount">Rows in the tile.</param>
/// <param name="Output">Destination buffer.</param>
/// <param name="OutputOffset">Element offset (in <paramref name="OutputType"/> elements).</param>
/// <param name="OutputType">Stored type of the result (rounded to nearest-even).</param>
/// <param name="Base">Optional base tile to add (may be the output buffer itself for in-place accumulation).</param>
/// <param name="BaseOffset">Element offset of the base tile (in <paramref name="BaseType"/> elements).</param>
/// <param name="BaseType">Stored type of the base tile.</param>
/// <param name="BitExact">
/// Compute every element as the same bits on every backend: with c[k] = Factor·Scale[k] and
/// B'[i,k] = B[i,k]·c[k] (each one fp32 multiply, as in the fast path), out[i,j] is
/// Σ_k B'[i,k]·A[k,j] over k ascending from +0, each product (exact in double) added in double, the sum
/// rounded once to fp32. No rounding depends on fused multiply-adds, vector widths or thread counts, so
/// a value that is then trimmed by magnitude (delta-space merges) gives identical masks on a CPU and a
/// GPU. F32 output without a base only. Slower than the fp32 product at high rank; at LoRA ranks it is
/// bound by the output write all the same.
/// </param>
/// <param name="NonFiniteFlag">
/// Optional: a buffer holding a 4-byte word (at <paramref name="NonFiniteFlagOffset"/> bytes) that the
/// product sets to a non-zero value when it writes any NaN or ±Inf, as stored in the output type (a finite
/// fp32 sum can round to ±Inf in F16 or BF16). It is never cleared here: the caller zeroes it, and a
/// device raises it from the epilogue, so an overflowed tile is caught without a second pass over it.
/// </param>
/// <param name="NonFiniteFlagOffset">Byte offset of the flag word (a multiple of 4).</param>
public readonly record struct ProductTile(
    long RowStart, int RowCount, KernelBuffer Output, long OutputOffset = 0, DType OutputType = DType.F32,
    KernelBuffer? Base = null, long BaseOffset = 0, DType BaseType = DType.F32, bool BitExact = false,
    KernelBuffer? NonFiniteFlag = null, long NonFiniteFlagOffset = 0);
