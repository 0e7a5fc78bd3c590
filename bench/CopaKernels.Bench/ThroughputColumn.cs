using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace CopaKernels.Bench;

/// <summary>Benchmarks that move a known number of bytes per invocation.</summary>
public interface IBytesPerOp
{
    /// <summary>Bytes read plus bytes written by one invocation, for the current parameters.</summary>
    long BytesPerOp(BenchmarkCase benchmark);
}

/// <summary>A GB/s column: bytes per operation over the mean time.</summary>
public sealed class GbPerSecondColumn : IColumn
{
    public string Id => nameof(GbPerSecondColumn);
    public string ColumnName => "GB/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Bytes read and written per operation / mean time (decimal GB)";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var report = summary[benchmarkCase];
        if (report?.ResultStatistics is not { } stats) return "-";
        var instance = (IBytesPerOp)Activator.CreateInstance(benchmarkCase.Descriptor.Type)!;
        long bytes = instance.BytesPerOp(benchmarkCase);
        return (bytes / stats.Mean).ToString("0.00"); // bytes per ns = GB/s
    }
}
