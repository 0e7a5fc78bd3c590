namespace CopaKernels.Merge;

/// <summary>One task's LoRA factors of one module, as F32 on the host.</summary>
/// <param name="A">r × d_in, row-major.</param>
/// <param name="B">d_out × r, row-major.</param>
/// <param name="Rank">r.</param>
/// <param name="Scale">s_n = α/r (or α/√r).</param>
/// <param name="Alpha">lora_alpha (copa-official carries the first adapter's).</param>
public sealed record TaskFactors(float[] A, float[] B, int Rank, double Scale, double Alpha);

/// <summary>All tasks' factors of one module.</summary>
/// <param name="Path">Module path (used in messages and as the DARE stream name).</param>
/// <param name="DOut">Output dimension.</param>
/// <param name="DIn">Input dimension.</param>
/// <param name="Tasks">One entry per adapter, in order.</param>
public sealed record ModuleInput(string Path, int DOut, int DIn, IReadOnlyList<TaskFactors> Tasks)
{
    /// <summary>
    /// The factor arrays belong to this merge alone (the streaming feed's fresh reads), so a method may
    /// trim them in place instead of copying them first. False for inputs a caller handed in.
    /// </summary>
    internal bool Transient { get; init; }

    /// <summary>
    /// Set when the factor arrays are allocated but not read yet (the streaming feed, for a method that
    /// reads each factor itself right before it trims it, while it is in cache). Null otherwise.
    /// </summary>
    internal DeferredFactors? Deferred { get; init; }

    /// <summary>
    /// Set by the streaming feed when the result is written as it is, in this dtype (adapter output of
    /// the method's exact rank): a method may then hand back its factors already encoded
    /// (<see cref="LowRankResult.Encoded"/>) instead of as F32. Null otherwise.
    /// </summary>
    internal Formats.Safetensors.DType? EncodeAs { get; init; }

    /// <summary>Where a method takes its result arrays: the streaming feed's pool, which gets them back once written.</summary>
    internal Streaming.FactorPool? Pool { get; init; }

    /// <summary>An uninitialised array of <paramref name="length"/> floats for a result (pooled when streaming).</summary>
    internal float[] NewArray(int length) => Pool?.Rent(length) ?? GC.AllocateUninitializedArray<float>(length);
}

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
    /// The factors already in the output's bytes (only for a <see cref="ModuleInput.EncodeAs"/> input);
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
