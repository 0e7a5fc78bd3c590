using System.Text.Json;
using CopaKernels.Merge;
using CopaKernels.Merge.Streaming;

namespace CopaKernels.Tests.Merge;

/// <summary><c>merge_report.json</c>: the hand-written writer produces exactly the serializer's text, and reads back.</summary>
public class MergeReportTests
{
    public static TheoryData<bool> Variants() => new() { true, false };

    [Theory]
    [MemberData(nameof(Variants))]
    public void ToJson_IsTheSerializersText_ByteForByte(bool full)
    {
        var report = Sample(full);
        var want = JsonSerializer.Serialize(report, MergeReportJson.Default.MergeReport);
        Assert.Equal(want, report.ToJson());
        var back = MergeReport.FromJson(report.ToJson());
        Assert.Equal(report.Modules.Count, back.Modules.Count);
        Assert.Equal(report.Summary, back.Summary);
        Assert.Equal(report.ToJson(), back.ToJson());   // every field reads back as it was written
    }

    private static MergeReport Sample(bool full) => new()
    {
        Tool = "copa 1.0.0",
        FinishedUtc = new DateTime(2026, 12, 2, 6, 11, 32, 834, DateTimeKind.Utc).AddTicks(5496),
        Method = full ? "dare-ties" : "copa",
        Parameters = new SortedDictionary<string, object?>(StringComparer.Ordinal)
        {
            ["density"] = 0.2,
            ["lambda"] = full ? double.NaN : 2.0,
            ["weights"] = full ? new[] { 1.0, -0.5, double.PositiveInfinity, 1e-300 } : new[] { 1.0 },
            ["rank"] = full ? 16 : "sum",
            ["normalize"] = true,
            ["seed"] = 18446744073709551615UL,
            ["clamp"] = full ? null : 0.0,
            ["space"] = "factors",
        },
        Adapters = [new MergeReport.InputFile("/tmp/a+b/<x> & 'ü' \"q\"/adapter_model.safetensors", 80014016)],
        Base = full ? [new MergeReport.InputFile("/m/model-00001-of-00002.safetensors", 1L << 40)] : null,
        Output = new MergeReport.OutputInfo("/tmp/out", "adapter", full ? "BF16" : null, 639631360, 448, full ? 128 : null),
        Device = "cpu: Vector512 (AVX-512), 2 threads",
        TimingsSeconds = new SortedDictionary<string, double>(StringComparer.Ordinal) { ["plan"] = 0.0665, ["merge_compute"] = 0.333, ["stream_total"] = 1e-7 },
        Memory = new MergeReport.MemoryInfo(2147483648, 78643200, 71909376, 0, true),
        Summary = new MergeReport.Totals(224, 64411183, 319815680, 3, full ? 1.5e-8 : 0),
        Modules =
        [
            new MergeReport.ModuleReport("model.layers.0.mlp.down_proj", 4096, 11008, [16, 16], 128, false,
                [0.0076293945f, float.NaN, -0f, float.Epsilon], full ? [0.012817383f, float.NegativeInfinity] : [], 389060, 1933312, 0,
                full ? 0.25 : null, 0.0406257, null, full ? [0.2, 1.0 / 3] : null, full ? [0.5] : null,
                full ? [new ScaleSummary(1.25, 2.5, double.PositiveInfinity, 3), ScaleSummary.Of([], 0)] : null, full ? 0.9375 : null),
            new MergeReport.ModuleReport("m", 1, 1, [], 0, true, [], [], 0, 0, 0, null, 0, full ? [0, 2] : null),
        ],
        Spectra = full
            ? [new MergeReport.ModuleSpectrum("model.layers.0.mlp.down_proj", [0, 1], [[3.5, 1e-300, 0], [2]], [4, 0.5]),
               new MergeReport.ModuleSpectrum("m", [0], [[]], null, "dense")]
            : null,
        Throughput = full ? new MergeReport.Timeline(0.04, [new(0, 0, 0, 0), new(0.125, 1L << 40, 3, 2)]) : null,
        FullTensors = full
            ? [new MergeReport.FullTensorReport("base_model.model.lm_head.weight", "modules_to_save", "weighted_mean", [1, 2])]
            : null,
    };
}
