using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels;

namespace CopaKernels.Merge.Routes;

/// <summary>What CoPA's trimmed factors are for next, so a route can keep them in the form that step reads best.</summary>
internal enum TrimmedUse
{
    /// <summary>The rank-Σr concatenation (copa): the host route may build it in the output's own bytes as the trims finish.</summary>
    Concatenation,

    /// <summary>The ordered sums over tasks (copa-official): the host route may keep them in their stored 16-bit format.</summary>
    OrderedSums,
}

/// <summary>
/// Takes one trimmed factor in its stored 16-bit format, on the thread that selected it, while it is in
/// cache: its values untrimmed and the threshold t of its trim; the taker keeps |x| ≥ t as it copies them.
/// Called once per factor, from several threads at once.
/// </summary>
internal delegate void KeepTrimmed16(int task, bool isB, ReadOnlySpan<ushort> values, float threshold);

/// <summary>
/// CoPA's step 1 and the row sums of step 2 for one module (SEMANTICS §2), and where the trimmed factors are.
/// </summary>
/// <param name="A">Ã_n per task: F32, or the arrays whose first half holds them as 16-bit (<see cref="Bits16"/>).</param>
/// <param name="B">B̃_n per task, likewise.</param>
/// <param name="SelA">Each A's selection (threshold and kept count).</param>
/// <param name="SelB">Each B's selection.</param>
/// <param name="RowSums">Per task, Σ_j|A[i,j]| at [0, r) and Σ_j|Ã[i,j]| at [r, 2r).</param>
internal sealed record TrimmedFactors(float[][] A, float[][] B, SelectionResult[] SelA, SelectionResult[] SelB, float[][] RowSums)
{
    /// <summary>Set when <see cref="A"/> and <see cref="B"/> keep the trimmed factors as 16-bit values in this format.</summary>
    public DType? Bits16 { get; init; }

    /// <summary>Set when the trimmed factors went straight into the output's bytes, where the concatenation is finished.</summary>
    public EncodedConcatenation? Output { get; init; }
}
