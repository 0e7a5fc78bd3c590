namespace CopaKernels.Merge.Streaming;

/// <summary>
/// Hands out the planned modules' factors in order. With prefetch on, the next module is read (file
/// reads and F32 conversion) on a worker thread while the caller computes the current one, so adapter
/// I/O overlaps compute; the backend itself is only ever used from the caller's thread.
/// </summary>
internal sealed class ModuleFeed : IDisposable
{
    private readonly MergePlan _plan;
    private readonly CancellationToken _ct;
    private readonly FactorPool _pool;
    private readonly bool _defer;
    private Task<ModuleInput>? _next;
    private int _index;

    /// <param name="plan">The plan whose modules are handed out.</param>
    /// <param name="pool">Where the factor arrays come from and go back to.</param>
    /// <param name="defer">Hand out modules whose factors are still in their files (<see cref="Factors.FactorHome.File"/>), for a route that reads each where it trims it.</param>
    /// <param name="ct">Cancellation.</param>
    public ModuleFeed(MergePlan plan, FactorPool pool, bool defer, CancellationToken ct)
    {
        _defer = defer;
        _plan = plan;
        _pool = pool;
        _ct = ct;
    }

    /// <summary>The factors of <paramref name="module"/>, which must be the next planned module.</summary>
    public ModuleInput Take(PlannedModule module)
    {
        if (_index >= _plan.Modules.Count || !ReferenceEquals(_plan.Modules[_index], module))
            throw new InvalidOperationException($"module {module.Path} requested out of plan order");
        var current = _next != null ? _next.GetAwaiter().GetResult() : Load(_index);
        _next = null;
        _index++;
        if (_plan.Prefetch && _index < _plan.Modules.Count)
        {
            int i = _index;
            _next = Task.Run(() => Load(i), _ct);
        }
        return current;
    }

    private ModuleInput Load(int i)
    {
        _ct.ThrowIfCancellationRequested();
        // The arrays are this merge's own, so a step may trim them in place.
        return AdapterModules.Load(_plan.Adapters, _plan.Modules[i].Source, _pool.Rent, _defer);
    }

    /// <summary>
    /// Hands a merged module's factor arrays back for the next reads, except any the result still
    /// refers to (a method may return an input array as its result).
    /// </summary>
    public void Recycle(ModuleInput input, ModuleResult result)
    {
        var kept = result switch
        {
            LowRankResult lr => new[] { lr.A, lr.B },
            DenseResult d => new[] { d.Delta },
            _ => [],
        };
        foreach (var t in input.Tasks)
        {
            if (!kept.Any(k => ReferenceEquals(k, t.A))) _pool.Return(t.A);
            if (!kept.Any(k => ReferenceEquals(k, t.B))) _pool.Return(t.B);
        }
    }

    /// <summary>Hands a low-rank result's arrays back once they are written (adapter output).</summary>
    public void Recycle(LowRankResult written)
    {
        if (written.Encoded is not null) return; // its buffers went to the write queue
        _pool.Return(written.A);
        _pool.Return(written.B);
    }

    public void Dispose()
    {
        // Let a read in flight finish before the caller closes the files it reads.
        try { _next?.Wait(); }
        catch (AggregateException) { }
    }
}
