using System.Text.Json;
using System.Text.Json.Serialization;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// <c>merge_report.json</c> (SPEC §7): what was merged, how, with what result, in how long and in how
/// much memory. Written into the output folder before it is moved into place.
/// </summary>
public sealed record MergeReport
{
    /// <summary>File name in the output folder.</summary>
    public const string FileName = "merge_report.json";

    /// <summary>Tool and version.</summary>
    public required string Tool { get; init; }

    /// <summary>UTC time the merge finished.</summary>
    public required DateTime FinishedUtc { get; init; }

    /// <summary>Method name.</summary>
    public required string Method { get; init; }

    /// <summary>Effective parameters (defaults filled in).</summary>
    public required SortedDictionary<string, object?> Parameters { get; init; }

    /// <summary>Input adapters, in task order.</summary>
    public required IReadOnlyList<InputFile> Adapters { get; init; }

    /// <summary>Base model shards (model output, or when given).</summary>
    public IReadOnlyList<InputFile>? Base { get; init; }

    /// <summary>Output folder, mode, dtype and size.</summary>
    public required OutputInfo Output { get; init; }

    /// <summary>Device description.</summary>
    public required string Device { get; init; }

    /// <summary>Seconds spent: plan, merge compute, writing, total.</summary>
    public required SortedDictionary<string, double> TimingsSeconds { get; init; }

    /// <summary>Memory: the budget, the plan's estimate, and the process's measured peak resident set.</summary>
    public required MemoryInfo Memory { get; init; }

    /// <summary>Totals over all modules.</summary>
    public required Totals Summary { get; init; }

    /// <summary>Per-module statistics, in write order.</summary>
    public required IReadOnlyList<ModuleReport> Modules { get; init; }

    /// <summary>Serialises with snake_case names.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, MergeReportJson.Default.MergeReport);

    /// <summary>Reads a report back (tests, tools).</summary>
    public static MergeReport FromJson(string json) => JsonSerializer.Deserialize(json, MergeReportJson.Default.MergeReport)!;

    /// <summary>An input file.</summary>
    public sealed record InputFile(string Path, long Bytes);

    /// <summary>The output.</summary>
    public sealed record OutputInfo(string Path, string Mode, string? Dtype, long DataBytes, int Tensors, int? Rank);

    /// <summary>Memory figures in bytes.</summary>
    public sealed record MemoryInfo(long MaxMemory, long EstimatedPeak, long PeakRss, long TileBytes, bool Prefetch);

    /// <summary>Totals.</summary>
    public sealed record Totals(int Modules, long Kept, long Considered, int ZeroDenominatorRows, double TruncationMaxRelativeError);

    /// <summary>One module.</summary>
    public sealed record ModuleReport(
        string Path, int DOut, int DIn, IReadOnlyList<int> Ranks, int Rank, bool Dense,
        IReadOnlyList<float> ThresholdsA, IReadOnlyList<float> ThresholdsB, long Kept, long Considered,
        int ZeroDenominatorRows, double? TruncationRelativeError, double Seconds);
}

/// <summary>
/// The report's serialiser, generated at compile time: the reflection-based one compiled about 400
/// methods (80 ms of JIT) at the end of every merge. The parameter values' runtime types are listed.
/// </summary>
[JsonSourceGenerationOptions(
    WriteIndented = true,
    PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals)]
[JsonSerializable(typeof(MergeReport))]
[JsonSerializable(typeof(double))]
[JsonSerializable(typeof(double[]))]
[JsonSerializable(typeof(bool))]
[JsonSerializable(typeof(int))]
[JsonSerializable(typeof(ulong))]
[JsonSerializable(typeof(string))]
internal sealed partial class MergeReportJson : JsonSerializerContext;
