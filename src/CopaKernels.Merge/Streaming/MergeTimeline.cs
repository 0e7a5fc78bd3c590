using System.Diagnostics;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// The merge's throughput over time: at a fixed interval a timer thread reads how many bytes the inputs
/// have given (<see cref="Formats.ITensorFile.BytesRead"/>), how many output bytes the merge has handed to
/// the write queue (computed) and how many the writer has written. The counters are plain interlocked
/// longs, so sampling costs the merge nothing it would notice; the samples are thinned to at most
/// <see cref="MaxSamples"/> by halving them (and doubling the interval) whenever they fill up.
/// </summary>
internal sealed class MergeTimeline : IDisposable
{
    /// <summary>The most samples kept (the report's chart has a point per sample).</summary>
    public const int MaxSamples = 256;

    private readonly Func<long> _read;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly List<MergeReport.TimelineSample> _samples = new();
    private readonly Lock _lock = new();
    private readonly Timer _timer;
    private long _computed, _written, _writeTicks;
    private int _intervalMs, _tick, _every = 1;

    /// <param name="read">Bytes read from every input so far.</param>
    /// <param name="intervalMs">Sampling interval at the start.</param>
    public MergeTimeline(Func<long> read, int intervalMs = 20)
    {
        _read = read;
        _intervalMs = intervalMs;
        Sample();
        _timer = new Timer(_ => OnTick(), null, intervalMs, intervalMs);
    }

    /// <summary>Output bytes handed to the writer.</summary>
    public void Computed(long bytes) => Interlocked.Add(ref _computed, bytes);

    /// <summary>Output bytes written, and the time the write took.</summary>
    public void Written(long bytes, long ticks)
    {
        Interlocked.Add(ref _written, bytes);
        Interlocked.Add(ref _writeTicks, ticks);
    }

    /// <summary>Time the writer spent writing.</summary>
    public TimeSpan WriteTime => Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _writeTicks));

    private void OnTick()
    {
        lock (_lock)
        {
            if (++_tick % _every != 0) return;
            Sample();
            if (_samples.Count < MaxSamples) return;
            // Keep every other sample (the first included) and sample half as often from now on.
            for (int i = 0; i < _samples.Count / 2; i++) _samples[i] = _samples[2 * i];
            _samples.RemoveRange(_samples.Count / 2, _samples.Count - _samples.Count / 2);
            _every *= 2;
        }
    }

    private void Sample() => _samples.Add(new MergeReport.TimelineSample(Math.Round(_clock.Elapsed.TotalSeconds, 4),
        _read(), Interlocked.Read(ref _computed), Interlocked.Read(ref _written)));

    /// <summary>Stops sampling and returns the samples, the last one taken now.</summary>
    public MergeReport.Timeline Finish()
    {
        _timer.Dispose();
        lock (_lock)
        {
            Sample();
            return new MergeReport.Timeline(_intervalMs * _every / 1000.0, _samples.ToList());
        }
    }

    public void Dispose() => _timer.Dispose();
}
