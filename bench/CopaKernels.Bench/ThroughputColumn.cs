using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace CopaKernels.Bench;

/// <summary>Benchmarks that move a known number of bytes per invocation.</summary>
public interface IBytesPerOp
{
    /// <summary>Bytes read plus bytes written by one invocation, for the current parameters.</summary>
    long BytesPerOp(BenchmarkCase benchmark);
}

/// <summary>Benchmarks that do a known number of floating-point operations per invocation.</summary>
public interface IFlopsPerOp
{
    /// <summary>Floating-point operations of one invocation (a fused multiply-add counts as two), for the current parameters.</summary>
    double FlopsPerOp(BenchmarkCase benchmark);
}

/// <summary>A rate column: a per-invocation amount (from the benchmark class) over the mean time in ns.</summary>
public abstract class RateColumn(string name, string legend, int priority) : IColumn
{
    public string Id => GetType().Name;
    public string ColumnName => name;
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => priority;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => legend;
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        if (summary[benchmarkCase]?.ResultStatistics is not { } stats) return "-";
        var instance = Activator.CreateInstance(benchmarkCase.Descriptor.Type)!;
        return (AmountPerOp(instance, benchmarkCase) / stats.Mean).ToString("0.00"); // per ns = giga per s
    }

    protected abstract double AmountPerOp(object benchmark, BenchmarkCase benchmarkCase);
}

/// <summary>GB/s: bytes read and written per invocation over the mean time.</summary>
public sealed class GbPerSecondColumn() : RateColumn("GB/s", "Bytes read and written per operation / mean time (decimal GB)", 0)
{
    protected override double AmountPerOp(object benchmark, BenchmarkCase benchmarkCase) => ((IBytesPerOp)benchmark).BytesPerOp(benchmarkCase);
}

/// <summary>GFLOP/s: floating-point operations per invocation over the mean time.</summary>
public sealed class GflopsPerSecondColumn() : RateColumn("GFLOP/s", "Floating-point operations per invocation (FMA = 2) / mean time (decimal GFLOP)", 1)
{
    protected override double AmountPerOp(object benchmark, BenchmarkCase benchmarkCase) => ((IFlopsPerOp)benchmark).FlopsPerOp(benchmarkCase);
}

/// <summary>The config every throughput benchmark uses: the default job plus the GB/s column.</summary>
public sealed class ThroughputConfig : ManualConfig
{
    public ThroughputConfig() => AddColumn(new GbPerSecondColumn());
}
