using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge.Streaming;

/// <summary>What a merge writes (SEMANTICS §5).</summary>
public enum OutputMode
{
    /// <summary>A PEFT adapter folder (adapter_config.json + adapter_model.safetensors).</summary>
    Adapter,
    /// <summary>The base model with ΔW added to every targeted weight, sharded like the base.</summary>
    Model,
    /// <summary>The dense ΔW of every module, as safetensors.</summary>
    Delta,
}

/// <summary>For which modules the report gives the singular-value spectra (<see cref="MergeReport.Spectra"/>).</summary>
public enum SpectraSelection
{
    /// <summary>Of each module type, the modules of its first, middle and last layer (the default).</summary>
    Few,
    /// <summary>Every module.</summary>
    All,
    /// <summary>None.</summary>
    None,
}

/// <summary>
/// Everything a merge job needs: inputs, method parameters, output, and resource limits. Built by the
/// CLI from flags and YAML, or directly by library users; checked by <see cref="MergePlanner.Plan"/>.
/// </summary>
public sealed record MergeRequest
{
    /// <summary>The default working-memory budget (2 GiB).</summary>
    public const long DefaultMaxMemory = 2L << 30;

    /// <summary>The default shard size of <see cref="OutputMode.Delta"/> output (5 GB, as Hugging Face).</summary>
    public const long DefaultDeltaShardSize = 5_000_000_000;

    /// <summary>Method and its parameters.</summary>
    public required MergeOptions Options { get; init; }

    /// <summary>PEFT adapter folders, in order (weights and tasks follow this order).</summary>
    public required IReadOnlyList<string> Adapters { get; init; }

    /// <summary>Output folder; must not exist or be empty, and must not be or lie inside an input.</summary>
    public required string Output { get; init; }

    /// <summary>What to write.</summary>
    public OutputMode Mode { get; init; } = OutputMode.Adapter;

    /// <summary>Base model (file, sharded folder or index); required for <see cref="OutputMode.Model"/>.</summary>
    public string? Base { get; init; }

    /// <summary>
    /// Adapter output rank: null keeps the method's exact low-rank result (rank Σ r_n for sums of
    /// products such as copa, r for factor-space methods and copa-official: SEMANTICS §5 "sum"); N re-ranks
    /// every module exactly to its best rank-N approximation (SEMANTICS §5, lora_alpha = N).
    /// </summary>
    public int? Rank { get; init; }

    /// <summary>Stored type of merged tensors (F32, BF16, F16); null: base dtype (model), inputs' dtype (adapter), F32 (delta).</summary>
    public DType? OutDType { get; init; }

    /// <summary>Maximum shard size in bytes; null mirrors the base's shards (model) or 5 GB (delta).</summary>
    public long? ShardSize { get; init; }

    /// <summary>Working-memory budget in bytes (see README: what it bounds and what it does not).</summary>
    public long MaxMemory { get; init; } = DefaultMaxMemory;

    /// <summary>
    /// Whether every written file is synced to disk before the output folder is renamed into place, so
    /// that the output is durable when the merge returns (default). False: the output is still complete
    /// and appears atomically (a failed or cancelled merge leaves nothing), but its data may still be in
    /// the page cache, as other tools leave theirs; the merge then does not wait for the disk.
    /// </summary>
    public bool Sync { get; init; } = true;

    /// <summary>Whether <c>merge_report.html</c> is written beside <c>merge_report.json</c> (default).</summary>
    public bool HtmlReport { get; init; } = true;

    /// <summary>The modules whose singular-value spectra the report gives.</summary>
    public SpectraSelection ReportSpectra { get; init; } = SpectraSelection.Few;
}
