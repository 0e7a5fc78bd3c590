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
}
