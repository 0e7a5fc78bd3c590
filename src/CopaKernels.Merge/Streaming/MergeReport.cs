using System.Text.Json;
using System.Text.Json.Serialization;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// <c>merge_report.json</c> (SEMANTICS §7): what was merged, how, with what result, in how long and in how
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

    /// <summary>The full tensors beside the factors and how each was merged; null (left out) when there are none.</summary>
    public IReadOnlyList<FullTensorReport>? FullTensors { get; init; }

    /// <summary>
    /// Exact singular values of each task's ΔW_n = s_n·B_n·A_n and of the merged ΔW, for the modules chosen
    /// (<see cref="MergeRequest.ReportSpectra"/>); null (left out) when none was asked for.
    /// </summary>
    public IReadOnlyList<ModuleSpectrum>? Spectra { get; init; }

    /// <summary>Bytes read, computed and written over the run's time; null (left out) in reports written before it existed.</summary>
    public Timeline? Throughput { get; init; }

    /// <summary>
    /// Serialises with snake_case names, indented, null members left out, NaN/±Inf as strings: exactly what
    /// <see cref="JsonSerializer"/> writes for this type with <see cref="MergeReportJson"/>'s options (a test
    /// holds the two equal), written by hand with a <see cref="Utf8JsonWriter"/> because the serializer, even
    /// source-generated, configures its metadata and compiles generic code at the end of each merge, in a
    /// process that runs once.
    /// </summary>
    public string ToJson()
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(4096);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("tool", Tool);
            w.WriteString("finished_utc", FinishedUtc);
            w.WriteString("method", Method);
            WriteParameters(w, Parameters);
            WriteFiles(w, "adapters", Adapters);
            if (Base != null) WriteFiles(w, "base", Base);
            w.WriteStartObject("output");
            w.WriteString("path", Output.Path);
            w.WriteString("mode", Output.Mode);
            if (Output.Dtype != null) w.WriteString("dtype", Output.Dtype);
            w.WriteNumber("data_bytes", Output.DataBytes);
            w.WriteNumber("tensors", Output.Tensors);
            if (Output.Rank is { } rank) w.WriteNumber("rank", rank);
            w.WriteBoolean("synced", Output.Synced);
            w.WriteEndObject();
            w.WriteString("device", Device);
            w.WriteStartObject("timings_seconds");
            foreach (var (k, v) in TimingsSeconds) WriteNumber(w, k, v);
            w.WriteEndObject();
            w.WriteStartObject("memory");
            w.WriteNumber("max_memory", Memory.MaxMemory);
            w.WriteNumber("estimated_peak", Memory.EstimatedPeak);
            w.WriteNumber("peak_rss", Memory.PeakRss);
            w.WriteNumber("tile_bytes", Memory.TileBytes);
            w.WriteBoolean("prefetch", Memory.Prefetch);
            w.WriteEndObject();
            w.WriteStartObject("summary");
            w.WriteNumber("modules", Summary.Modules);
            w.WriteNumber("kept", Summary.Kept);
            w.WriteNumber("considered", Summary.Considered);
            w.WriteNumber("zero_denominator_rows", Summary.ZeroDenominatorRows);
            WriteNumber(w, "truncation_max_relative_error", Summary.TruncationMaxRelativeError);
            w.WriteEndObject();
            w.WriteStartArray("modules");
            foreach (var m in Modules)
            {
                w.WriteStartObject();
                w.WriteString("path", m.Path);
                w.WriteNumber("d_out", m.DOut);
                w.WriteNumber("d_in", m.DIn);
                WriteInts(w, "ranks", m.Ranks);
                w.WriteNumber("rank", m.Rank);
                w.WriteBoolean("dense", m.Dense);
                WriteFloats(w, "thresholds_a", m.ThresholdsA);
                WriteFloats(w, "thresholds_b", m.ThresholdsB);
                w.WriteNumber("kept", m.Kept);
                w.WriteNumber("considered", m.Considered);
                w.WriteNumber("zero_denominator_rows", m.ZeroDenominatorRows);
                if (m.TruncationRelativeError is { } e) WriteNumber(w, "truncation_relative_error", e);
                WriteNumber(w, "seconds", m.Seconds);
                if (m.Adapters != null) WriteInts(w, "adapters", m.Adapters);
                if (m.KeptFractionA != null) WriteDoubles(w, "kept_fraction_a", m.KeptFractionA);
                if (m.KeptFractionB != null) WriteDoubles(w, "kept_fraction_b", m.KeptFractionB);
                if (m.Scales != null)
                {
                    w.WriteStartArray("scales");
                    foreach (var sc in m.Scales)
                    {
                        w.WriteStartObject();
                        WriteNumber(w, "min", sc.Min);
                        WriteNumber(w, "median", sc.Median);
                        WriteNumber(w, "max", sc.Max);
                        w.WriteNumber("fallback_rows", sc.FallbackRows);
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                }
                if (m.EnergyKept is { } energy) WriteNumber(w, "energy_kept", energy);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            if (FullTensors != null)
            {
                w.WriteStartArray("full_tensors");
                foreach (var f in FullTensors)
                {
                    w.WriteStartObject();
                    w.WriteString("key", f.Key);
                    w.WriteString("kind", f.Kind);
                    w.WriteString("rule", f.Rule);
                    WriteInts(w, "adapters", f.Adapters);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }
            if (Spectra != null)
            {
                w.WriteStartArray("spectra");
                foreach (var sp in Spectra)
                {
                    w.WriteStartObject();
                    w.WriteString("path", sp.Path);
                    WriteInts(w, "adapters", sp.Adapters);
                    w.WriteStartArray("tasks");
                    foreach (var t in sp.Tasks) WriteDoubleArray(w, t);
                    w.WriteEndArray();
                    if (sp.Merged != null) WriteDoubles(w, "merged", sp.Merged);
                    if (sp.Note != null) w.WriteString("note", sp.Note);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }
            if (Throughput != null)
            {
                w.WriteStartObject("throughput");
                WriteNumber(w, "interval_seconds", Throughput.IntervalSeconds);
                w.WriteStartArray("samples");
                foreach (var x in Throughput.Samples)
                {
                    w.WriteStartObject();
                    WriteNumber(w, "seconds", x.Seconds);
                    w.WriteNumber("read", x.Read);
                    w.WriteNumber("computed", x.Computed);
                    w.WriteNumber("written", x.Written);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>The "parameters" member: each value as the serializer writes its runtime type (also the provenance's).</summary>
    internal static void WriteParameters(Utf8JsonWriter w, SortedDictionary<string, object?> parameters)
    {
        w.WriteStartObject("parameters");
        foreach (var (k, v) in parameters)
        {
            w.WritePropertyName(k);
            WriteValue(w, v);
        }
        w.WriteEndObject();
    }

    private static void WriteFiles(Utf8JsonWriter w, string name, IReadOnlyList<InputFile> files)
    {
        w.WriteStartArray(name);
        foreach (var f in files)
        {
            w.WriteStartObject();
            w.WriteString("path", f.Path);
            w.WriteNumber("bytes", f.Bytes);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    private static void WriteInts(Utf8JsonWriter w, string name, IReadOnlyList<int> values)
    {
        w.WriteStartArray(name);
        foreach (var v in values) w.WriteNumberValue(v);
        w.WriteEndArray();
    }

    private static void WriteFloats(Utf8JsonWriter w, string name, IReadOnlyList<float> values)
    {
        w.WriteStartArray(name);
        // Indexed, not foreach: enumerating an array through the interface is generic code compiled at run time.
        for (int i = 0; i < values.Count; i++)
        {
            float v = values[i];
            if (float.IsFinite(v)) w.WriteNumberValue(v);
            else w.WriteStringValue(v.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
        w.WriteEndArray();
    }

    private static void WriteDoubles(Utf8JsonWriter w, string name, IReadOnlyList<double> values)
    {
        w.WritePropertyName(name);
        WriteDoubleArray(w, values);
    }

    private static void WriteDoubleArray(Utf8JsonWriter w, IReadOnlyList<double> values)
    {
        w.WriteStartArray();
        for (int i = 0; i < values.Count; i++) WriteValue(w, values[i]);
        w.WriteEndArray();
    }

    private static void WriteNumber(Utf8JsonWriter w, string name, double v)
    {
        w.WritePropertyName(name);
        WriteValue(w, v);
    }

    /// <summary>A parameter value as the serializer writes its runtime type (named literals for NaN and ±Inf).</summary>
    private static void WriteValue(Utf8JsonWriter w, object? v)
    {
        switch (v)
        {
            case null: w.WriteNullValue(); break;
            case double d when !double.IsFinite(d): w.WriteStringValue(d.ToString(System.Globalization.CultureInfo.InvariantCulture)); break;
            case double d: w.WriteNumberValue(d); break;
            case int i: w.WriteNumberValue(i); break;
            case long l: w.WriteNumberValue(l); break;
            case ulong u: w.WriteNumberValue(u); break;
            case bool b: w.WriteBooleanValue(b); break;
            case string str: w.WriteStringValue(str); break;
            case JsonElement e: e.WriteTo(w); break;   // a report read back (FromJson) writes its values as they were
            case double[] a:
                w.WriteStartArray();
                foreach (var x in a) WriteValue(w, x);
                w.WriteEndArray();
                break;
            default: throw new NotSupportedException($"report parameter of type {v.GetType().Name}");
        }
    }

    /// <summary>Reads a report back (tests, tools).</summary>
    public static MergeReport FromJson(string json) => JsonSerializer.Deserialize(json, MergeReportJson.Default.MergeReport)!;

    /// <summary>An input file.</summary>
    public sealed record InputFile(string Path, long Bytes);

    /// <summary>The output.</summary>
    public sealed record OutputInfo(string Path, string Mode, string? Dtype, long DataBytes, int Tensors, int? Rank, bool Synced = true);

    /// <summary>Memory figures in bytes.</summary>
    public sealed record MemoryInfo(long MaxMemory, long EstimatedPeak, long PeakRss, long TileBytes, bool Prefetch);

    /// <summary>Totals.</summary>
    public sealed record Totals(int Modules, long Kept, long Considered, int ZeroDenominatorRows, double TruncationMaxRelativeError);

    /// <summary>A full tensor: its key, what it is (modules_to_save, non_lora_trainables, base_layer), how it was merged (mean, weighted_mean, copy), and the adapters (0-based) that had it.</summary>
    public sealed record FullTensorReport(string Key, string Kind, string Rule, IReadOnlyList<int> Adapters);

    /// <summary>One module.</summary>
    /// <remarks>
    /// <c>Adapters</c>: where only some adapters have the module, their indices (0-based) in the report's
    /// <c>adapters</c> list, which <c>Ranks</c> and the thresholds follow; null (left out) when all have it.
    /// </remarks>
    /// <remarks>
    /// <c>KeptFractionA</c>/<c>KeptFractionB</c>: each task's kept fraction, A side (or the only tensor) and B
    /// side, where the method trims or drops; <c>Scales</c>: CoPA's S_n per task; <c>EnergyKept</c>: with an
    /// output rank N, Σ_{i&lt;N} σ_i² / Σ σ_i² of the merged ΔW (1 − the squared truncation error).
    /// Each is null (left out) where it does not apply.
    /// </remarks>
    public sealed record ModuleReport(
        string Path, int DOut, int DIn, IReadOnlyList<int> Ranks, int Rank, bool Dense,
        IReadOnlyList<float> ThresholdsA, IReadOnlyList<float> ThresholdsB, long Kept, long Considered,
        int ZeroDenominatorRows, double? TruncationRelativeError, double Seconds, IReadOnlyList<int>? Adapters = null,
        IReadOnlyList<double>? KeptFractionA = null, IReadOnlyList<double>? KeptFractionB = null,
        IReadOnlyList<ScaleSummary>? Scales = null, double? EnergyKept = null);

    /// <summary>The singular values of one module's updates, each list descending.</summary>
    /// <param name="Path">Module path.</param>
    /// <param name="Adapters">The adapters (0-based) that have the module, in the order of <paramref name="Tasks"/>.</param>
    /// <param name="Tasks">σ(ΔW_n) of each of those adapters' update s_n·B_n·A_n.</param>
    /// <param name="Merged">σ of the merged update as written; null when the merge gave a dense ΔW (no low-rank form to take it from cheaply).</param>
    /// <param name="Note">Why <paramref name="Merged"/> is missing, or null.</param>
    public sealed record ModuleSpectrum(string Path, IReadOnlyList<int> Adapters, IReadOnlyList<IReadOnlyList<double>> Tasks,
        IReadOnlyList<double>? Merged, string? Note = null);

    /// <summary>Cumulative bytes at sampled times of the run.</summary>
    /// <param name="IntervalSeconds">The sampling interval the samples ended with (it doubles to keep them few).</param>
    /// <param name="Samples">The samples, in time order; the last is the end of the stream.</param>
    public sealed record Timeline(double IntervalSeconds, IReadOnlyList<TimelineSample> Samples);

    /// <summary>One sample: seconds since the stream started, and bytes read from the inputs, handed to the writer (computed), and written.</summary>
    public sealed record TimelineSample(double Seconds, long Read, long Computed, long Written);
}

/// <summary>
/// The report's serialiser, generated at compile time: the reflection-based one JIT-compiles hundreds of
/// methods at the end of every merge. The parameter values' runtime types are listed.
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
