using System.Diagnostics;
using CopaKernels.Kernels;
using CopaKernels.Merge.Streaming;

namespace CopaKernels.Merge;

/// <summary>
/// One whole merge, as <c>copa merge</c> runs it: <see cref="Plan"/> checks everything from headers
/// alone (every input error is raised there, before anything heavy is read or written), then
/// <see cref="Run"/> streams it on a backend into the output folder, which appears only when complete.
/// </summary>
/// <example>
/// <code>
/// using var job = MergeJob.Plan(new MergeRequest
/// {
///     Options = new MergeOptions { Method = "copa" },
///     Adapters = ["adapters/math", "adapters/code"],
///     Output = "merged",
/// });
/// using var backend = new CpuBackend();
/// MergeReport report = job.Run(backend, progress: null, cancellationToken);
/// </code>
/// </example>
public sealed class MergeJob : IDisposable
{
    private bool _ran;

    private MergeJob(MergePlan plan, TimeSpan planTime)
    {
        Planned = plan;
        PlanTime = planTime;
    }

    /// <summary>The checked plan: modules, output layout, memory plan. It holds the inputs open until the job is disposed.</summary>
    public MergePlan Planned { get; }

    /// <summary>How long planning took (reported in <c>merge_report.json</c>).</summary>
    public TimeSpan PlanTime { get; }

    /// <summary>
    /// Plans <paramref name="request"/>. Throws <see cref="Formats.CopaInputException"/> (one line naming the
    /// file and, where there is one, the tensor) for anything that would not merge exactly.
    /// </summary>
    public static MergeJob Plan(MergeRequest request)
    {
        var clock = Stopwatch.StartNew();
        Reporting.ReportWarmup.Start(request);
        var plan = MergePlanner.Plan(request);
        return new MergeJob(plan, clock.Elapsed);
    }

    /// <summary>
    /// Runs the merge on <paramref name="backend"/> and returns the report written beside the output. Cancelled,
    /// or on any error, it leaves no output and the inputs untouched. A job runs once.
    /// </summary>
    public MergeReport Run(IMergeBackend backend, IMergeProgress? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (_ran) throw new InvalidOperationException("this merge job has already run; plan a new one");
        _ran = true;
        return MergeRunner.Run(Planned, backend, progress, PlanTime.TotalSeconds, cancellationToken);
    }

    /// <inheritdoc/>
    public void Dispose() => Planned.Dispose();
}
