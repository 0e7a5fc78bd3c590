using System.Diagnostics;
using CopaKernels.Merge.Streaming;
using Spectre.Console;

namespace CopaKernels.Cli;

/// <summary>
/// Merge progress on stderr: a live bar (bytes, tensors, MB/s, ETA) on an interactive terminal, plain
/// log lines (every 10% or 10 s) otherwise, nothing with --quiet.
/// </summary>
internal static class ConsoleProgress
{
    /// <summary>Runs <paramref name="work"/> with the progress display that suits <paramref name="stderr"/>.</summary>
    public static T Run<T>(TextWriter stderr, bool quiet, string title, Func<IMergeProgress?, T> work)
    {
        if (quiet) return work(null);
        bool interactive = ReferenceEquals(stderr, Console.Error) && !Console.IsErrorRedirected && !Console.IsOutputRedirected;
        if (!interactive) return work(new LogLines(stderr, title));
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(stderr) });
        T result = default!;
        console.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(),
                new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(title), autoStart: true);
                result = work(new Bar(task, title));
            });
        return result;
    }

    private sealed class Bar(ProgressTask task, string title) : IMergeProgress
    {
        private int _tensors, _done;

        public void Start(long totalBytes, int tensors)
        {
            _tensors = tensors;
            task.MaxValue = Math.Max(1, totalBytes);
        }

        public void Advance(long bytes, string? tensorDone)
        {
            if (bytes > 0) task.Increment(bytes);
            if (tensorDone != null) task.Description = Markup.Escape($"{title} {++_done}/{Terminal.Count(_tensors, "tensor")}");
        }
    }

    private sealed class LogLines(TextWriter log, string title) : IMergeProgress
    {
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private long _total, _bytes;
        private int _tensors, _done;
        private double _lastLine;
        private int _lastDecile;

        public void Start(long totalBytes, int tensors)
        {
            _total = Math.Max(1, totalBytes);
            _tensors = tensors;
            log.WriteLine($"{title}: {Terminal.Count(tensors, "tensor")}, {Terminal.Bytes(totalBytes)} to write");
        }

        public void Advance(long bytes, string? tensorDone)
        {
            _bytes += bytes;
            if (tensorDone != null) _done++;
            double t = _clock.Elapsed.TotalSeconds;
            int decile = (int)(10 * _bytes / _total);
            bool finished = _done == _tensors && tensorDone != null;
            // A line per 10% at most every 2 s, at least every 10 s, and the last one: short jobs stay quiet.
            if (!finished && !(decile > _lastDecile && t - _lastLine >= 2) && t - _lastLine < 10) return;
            if (finished && t < 2) return;
            _lastDecile = decile;
            _lastLine = t;
            double rate = t > 0 ? _bytes / t : 0;
            string eta = rate > 0 ? $"{(_total - _bytes) / rate:0} s" : "?";
            log.WriteLine($"{title}: {100.0 * _bytes / _total,5:0}%  {Terminal.Bytes(_bytes)} of {Terminal.Bytes(_total)}, {_done} of {Terminal.Count(_tensors, "tensor")}, {rate / 1e6:0.0} MB/s, ETA {eta}");
        }
    }
}
