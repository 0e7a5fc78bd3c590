namespace CopaKernels.Merge;

/// <summary>A merged module: a low-rank pair (ΔW = Scale·B·A) or a dense ΔW.</summary>
public abstract record ModuleResult
{
    /// <summary>Per-module statistics for the merge report.</summary>
    public ModuleStats Stats { get; init; } = new();
}

/// <summary>ΔW = Scale · B · A with B d_out × Rank and A Rank × d_in (row-major F32).</summary>
/// <param name="B">The B factor.</param>
/// <param name="A">The A factor.</param>
/// <param name="Rank">Inner dimension.</param>
/// <param name="Scale">The LoRA scale the factors are meant with (1 when folded in).</param>
/// <param name="Alpha">lora_alpha to write for this module (Rank when Scale = 1).</param>
public sealed record LowRankResult(float[] B, float[] A, int Rank, double Scale, double Alpha) : ModuleResult
{
    /// <summary>
    /// The factors already in the output's bytes (only where the run writes this result as it is: <see cref="Routes.ResultSink.EncodeAs"/>);
    /// <see cref="B"/> and <see cref="A"/> are then empty.
    /// </summary>
    internal EncodedFactors? Encoded { get; init; }
}

/// <summary>A low-rank result's factors encoded in <paramref name="DType"/>, in pooled buffers the write queue takes over.</summary>
/// <param name="DType">The element type of the bytes.</param>
/// <param name="B">d_out × rank values.</param>
/// <param name="BLength">Bytes of <paramref name="B"/> in use.</param>
/// <param name="A">rank × d_in values.</param>
/// <param name="ALength">Bytes of <paramref name="A"/> in use.</param>
internal sealed record EncodedFactors(Formats.Safetensors.DType DType, byte[] B, int BLength, byte[] A, int ALength);

/// <summary>A dense ΔW, d_out × d_in row-major F32.</summary>
/// <param name="Delta">The update.</param>
public sealed record DenseResult(float[] Delta) : ModuleResult;

/// <summary>What a merge reports per module.</summary>
public sealed record ModuleStats
{
    /// <summary>Trim thresholds t, per task (A side or the only tensor).</summary>
    public List<float> ThresholdsA { get; init; } = new();

    /// <summary>Trim thresholds t, per task (B side).</summary>
    public List<float> ThresholdsB { get; init; } = new();

    /// <summary>Entries kept by the trims / drops, over all tensors of the module.</summary>
    public long Kept { get; set; }

    /// <summary>Entries considered by the trims / drops.</summary>
    public long Total { get; set; }

    /// <summary>CoPA rows whose trimmed |x| sum was 0 (S set to 1).</summary>
    public int ZeroDenominatorRows { get; set; }

    /// <summary>Fraction of entries each task's trim or drop kept, per task (A side, or the only tensor: a task's ΔW in delta space).</summary>
    public List<double> KeptFractionA { get; init; } = new();

    /// <summary>Fraction of entries each task's trim or drop kept, per task (B side).</summary>
    public List<double> KeptFractionB { get; init; } = new();

    /// <summary>CoPA: each task's complementary scales S_n (after the clamp, before the cross-task normalisation), summarised.</summary>
    public List<ScaleSummary> Scales { get; init; } = new();

    /// <summary>kept / total for <see cref="KeptFractionA"/> and <see cref="KeptFractionB"/>: 1 for an empty tensor (nothing was dropped).</summary>
    internal static double Fraction(long kept, long total) => total == 0 ? 1 : (double)kept / total;
}

/// <summary>
/// One task's complementary scales S_n[i] = Σ_j|A_n[i,j]| / Σ_j|Ã_n[i,j]| over the rank rows i of a module
/// (SEMANTICS §2 step 2): their spread, and the rows whose trimmed sum was 0, where S fell back to 1.
/// </summary>
/// <param name="Min">Smallest S_n[i].</param>
/// <param name="Median">Median (the mean of the middle two for an even rank).</param>
/// <param name="Max">Largest S_n[i].</param>
/// <param name="FallbackRows">Rows set to 1 because their trimmed sum was 0.</param>
public sealed record ScaleSummary(double Min, double Median, double Max, int FallbackRows)
{
    /// <summary>Summarises <paramref name="s"/> (not modified).</summary>
    public static ScaleSummary Of(ReadOnlySpan<double> s, int fallbackRows)
    {
        if (s.Length == 0) return new ScaleSummary(double.NaN, double.NaN, double.NaN, fallbackRows);
        var sorted = CopaScaling.SortedCopy(s);
        int n = sorted.Length;
        double median = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
        return new ScaleSummary(sorted[0], median, sorted[^1], fallbackRows);
    }
}
