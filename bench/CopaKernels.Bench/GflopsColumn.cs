using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace CopaKernels.Bench;

/// <summary>Benchmarks that do a known number of floating-point operations per invocation.</summary>
public interface IFlopsPerOp
{
    /// <summary>Floating-point operations of one invocation (a fused multiply-add counts as two), for the current parameters.</summary>
    double FlopsPerOp(BenchmarkCase benchmark);
}

/// <summary>A GFLOP/s column: operations per invocation over the mean time.</summary>
public sealed class GflopsPerSecondColumn : IColumn
{
    public string Id => nameof(GflopsPerSecondColumn);
    public string ColumnName => "GFLOP/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 1;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "Floating-point operations per invocation (FMA = 2) / mean time (decimal GFLOP)";
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var report = summary[benchmarkCase];
        if (report?.ResultStatistics is not { } stats) return "-";
        var instance = (IFlopsPerOp)Activator.CreateInstance(benchmarkCase.Descriptor.Type)!;
        return (instance.FlopsPerOp(benchmarkCase) / stats.Mean).ToString("0.0"); // flop per ns = GFLOP/s
    }
}
