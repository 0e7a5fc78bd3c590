using System.Diagnostics;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using CopaKernels.Formats;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;
using CopaKernels.Merge.Routes;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// Runs a <see cref="MergePlan"/>: streams module by module (read → merge on the backend → write),
/// everything under a temporary folder beside the output that is moved into place only after the
/// last byte and the report are written. A failure or cancellation removes the temporary folder;
/// inputs are only ever opened for reading.
/// </summary>
public sealed class MergeRunner
{
    private readonly MergePlan _plan;
    private readonly IMergeBackend _backend;
    private readonly FactorPool _pool;
    private readonly MergeRoute _route;
    private readonly IMergeProgress? _progress;
    private readonly CancellationToken _ct;
    private readonly List<MergeReport.ModuleReport> _reports = new();
    private readonly Stopwatch _compute = new();
    private readonly ModuleSpectra _spectra;
    private readonly ITensorFile[] _inputs;
    private MergeTimeline? _timeline;
    private double _maxTruncationError;

    private MergeRunner(MergePlan plan, IMergeBackend backend, IMergeProgress? progress, CancellationToken ct)
    {
        _plan = plan;
        _backend = backend;
        _progress = progress;
        _ct = ct;
        _pool = FactorPool.For(plan);
        // Adapter output of the method's exact result is written as it comes: a method may encode it itself.
        var encodeAs = plan.Request.Mode == OutputMode.Adapter && plan.Request.Rank is null ? plan.OutDType : null;
        _route = MergeRoute.For(backend, new ResultSink(_pool, encodeAs));
        _spectra = new ModuleSpectra(plan);
        // Every file the run reads from, for the bytes-read timeline.
        var inputs = new HashSet<ITensorFile>(ReferenceEqualityComparer.Instance);
        foreach (var a in plan.Adapters)
        {
            inputs.Add(a.Weights);
            if (a.Trainables != null) inputs.Add(a.Trainables);
        }
        foreach (var f in plan.FullTensors)
            foreach (var source in f.Sources) inputs.Add(source.File);
        if (plan.Base != null) foreach (var shard in plan.Base.Shards) inputs.Add(shard);
        _inputs = inputs.ToArray();
    }

    private TimeSpan ReadTime()
    {
        var total = TimeSpan.Zero;
        foreach (var f in _inputs) total += f.ReadTime;
        return total;
    }

    private long BytesRead()
    {
        long total = 0;
        foreach (var f in _inputs) total += f.BytesRead;
        return total;
    }

    private static readonly AsyncLocal<Action<string>?> s_beforeTensor = new();

    /// <summary>
    /// Test hook: called with each output tensor's name before it is written (failure injection). Local
    /// to the setting test's flow, so merges run by other tests at the same time are not affected.
    /// </summary>
    internal static Action<string>? BeforeTensor
    {
        get => s_beforeTensor.Value;
        set => s_beforeTensor.Value = value;
    }

    /// <summary>Runs the plan and returns the report that was written beside the output.</summary>
    /// <param name="plan">A plan from <see cref="MergePlanner.Plan"/>.</param>
    /// <param name="backend">Where the kernels run.</param>
    /// <param name="progress">Progress sink, or null.</param>
    /// <param name="planSeconds">Time the planning took, for the report.</param>
    /// <param name="ct">Cancellation (Ctrl-C): the output is then not created.</param>
    public static MergeReport Run(MergePlan plan, IMergeBackend backend, IMergeProgress? progress = null,
        double planSeconds = 0, CancellationToken ct = default)
    {
        var runner = new MergeRunner(plan, backend, progress, ct);
        // A merge that fails stops the spectra's background thread too (after the module it is on).
        using (runner._spectra) return runner.Execute(planSeconds);
    }

    private MergeReport Execute(double planSeconds)
    {
        var total = Stopwatch.StartNew();
        using var folder = AtomicFolder.Create(_plan.Request.Output);
        long read0 = BytesRead();
        TimeSpan readTime0 = ReadTime();
        int tensors;
        _spectra.StartEarly();
        using (_timeline = new MergeTimeline(() => BytesRead() - read0))
        {
            switch (_plan.Request.Mode)
            {
                case OutputMode.Adapter:
                    tensors = WriteAdapter(folder.TempPath);
                    break;
                default:
                    tensors = WriteSharded(folder.TempPath);
                    break;
            }
        }
        var throughput = _timeline.Finish();
        _ct.ThrowIfCancellationRequested();
        total.Stop();
        var readSeconds = (ReadTime() - readTime0).TotalSeconds;
        // The data is written. Its sync to disk waits on the disk with the cores idle: meanwhile, another
        // thread finishes the spectra (on every core; the tasks' were begun during the stream) and writes the
        // report, which the output gets after.
        string? adapterFile = _plan.Request.Mode == OutputMode.Adapter ? Path.Combine(folder.TempPath, LoraAdapter.WeightsFileName) : null;
        int threads = _route.Parallel.MaxDegreeOfParallelism > 0 ? _route.Parallel.MaxDegreeOfParallelism : Environment.ProcessorCount;
        var dataFiles = folder.Files();
        var finishing = Task.Run(() =>
        {
            var spectra = _spectra.Compute(adapterFile, threads, _ct);
            var r = MakeReport(tensors, planSeconds, total.Elapsed.TotalSeconds) with { Spectra = spectra, Throughput = throughput };
            r.TimingsSeconds["read"] = Math.Round(readSeconds, 4);
            r.TimingsSeconds["write"] = Math.Round(_timeline.WriteTime.TotalSeconds, 4);
            if (spectra != null) r.TimingsSeconds["spectra"] = Math.Round(_spectra.Busy.TotalSeconds, 4);
            // Written while the data files are synced, the page beside the JSON; Commit syncs these two as well.
            var page = _plan.Request.HtmlReport
                ? Task.Run(() => Reporting.MergeReportHtml.Write(r, Path.Combine(folder.TempPath, Reporting.MergeReportHtml.FileName)))
                : Task.CompletedTask;
            try { File.WriteAllText(Path.Combine(folder.TempPath, MergeReport.FileName), r.ToJson() + "\n"); }
            catch
            {
                WaitQuietly(page);
                throw;
            }
            page.GetAwaiter().GetResult();
            return r;
        }, _ct);
        try
        {
            if (_plan.Request.Sync) folder.SyncFiles(dataFiles);
        }
        catch
        {
            // The report's thread writes into the folder: let it finish before the folder is removed.
            WaitQuietly(finishing);
            throw;
        }
        var report = finishing.GetAwaiter().GetResult();
        // Every byte was read: an input written to or replaced since it was opened may have given some of
        // them from each version, so the output is committed only if every input is still what was opened.
        _plan.CheckInputsUnchanged();
        folder.Commit(_plan.Request.Sync);
        return report;
    }

    /// <summary>Waits for a task that writes into the output folder before an error removes the folder; the task's own error gives way to that one.</summary>
    private static void WaitQuietly(Task task)
    {
        try { task.Wait(); }
        catch (AggregateException) { }
    }

    // ---- adapter output ----

    private int WriteAdapter(string dir)
    {
        var adapters = _plan.Adapters;
        var specs = _plan.Modules.Select(m => new AdapterModuleSpec(m.Path, m.DOut, m.DIn, m.OutRank, m.Embedding));
        var first = adapters[0].Config;
        var meta = Provenance();
        using var writer = new AdapterWriter(dir, new JsonObject(), specs, _plan.OutDType!.Value, meta, flushToDisk: false,
            FullTensors.AdapterSpecs(_plan, inTrainablesFile: false));
        var trainableSpecs = FullTensors.AdapterSpecs(_plan, inTrainablesFile: true).ToList();
        using var trainables = trainableSpecs.Count == 0 ? null
            : new SafetensorsWriter(Path.Combine(dir, LoraAdapter.TrainablesName + ".safetensors"), trainableSpecs,
                new Dictionary<string, string>(meta) { ["format"] = "pt" }, flushToDisk: false);
        var full = _plan.FullTensors.ToDictionary(f => f.Key, StringComparer.Ordinal);
        _progress?.Start(writer.Weights.DataLength + (trainables?.DataLength ?? 0), writer.Weights.Layout.Count + (trainables?.Layout.Count ?? 0));
        var written = new List<WrittenModule>(_plan.Modules.Count);
        using (var queue = new WriteQueue(name => trainables != null && full.TryGetValue(name, out var f) && f.InTrainablesFile ? trainables : writer.Weights, _timeline))
        using (var feed = new ModuleFeed(_plan, _pool, DeferReads, _ct))
        {
            var tiles = new TileWriter(_backend, queue, null, _progress, _ct);
            // The layout is sorted by name, so a module's lora_A and lora_B come next to each other, in plan order;
            // the full tensors are written where the layout puts them.
            var layout = writer.Weights.Layout;
            int next = 0;
            foreach (var m in _plan.Modules)
            try
            {
                for (; full.TryGetValue(layout[next].Name, out var f); next++) WriteFull(layout[next], f, queue, tiles);
                var r = (LowRankResult)Merge(feed, m);
                for (int k = 0; k < 2; k++)
                {
                    var t = layout[next++];
                    bool isA = t.Name == LoraAdapter.KeyA(m.Path, m.Embedding);
                    if (!isA && t.Name != LoraAdapter.KeyB(m.Path, m.Embedding))
                        throw new InvalidOperationException($"{t.Name} is next in the layout, not a factor of {m.Path}");
                    BeforeTensor?.Invoke(t.Name);
                    if (r.Encoded is { } e)
                    {
                        // Encoded by the method in this tensor's dtype (the route's ResultSink.EncodeAs): written as it is.
                        var (bytes, length) = isA ? (e.A, e.ALength) : (e.B, e.BLength);
                        if (e.DType != t.DType || length != t.ByteLength)
                            throw new InvalidOperationException($"{t.Name}: encoded as {e.DType}, {length} bytes, but declared {t.DType}, {t.ByteLength} bytes");
                        queue.Append(t.Name, bytes, length);
                    }
                    else tiles.Values(t, isA ? r.A : r.B);
                    _progress?.Advance(t.ByteLength, t.Name);
                }
                written.Add(new WrittenModule(m.Path, r.Rank, r.Scale, r.Alpha));
                feed.Recycle(r); // converted and queued: the floats are free
            }
            catch (NonFiniteResultException e) { throw Overflow(m, e); }
            for (; next < layout.Count; next++) WriteFull(layout[next], full[layout[next].Name], queue, tiles);
            if (trainables != null)
                foreach (var t in trainables.Layout) WriteFull(t, full[t.Name], queue, tiles);
            queue.Complete();
        }
        writer.Config = AdapterConfigFor(written, first);
        // PEFT loads a module's trained copy only for the modules its config lists in modules_to_save.
        var saved = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var f in _plan.FullTensors.Where(f => f.Kind == FullTensorKind.ModulesToSave))
            foreach (int n in f.Adapters)
                if (_plan.Adapters[n].Config.Targeting.ModuleToSave(f.BaseTensor) is { } name) saved.Add(name);
        if (saved.Count > 0) writer.Config["modules_to_save"] = new JsonArray(saved.Select(s => (JsonNode)s!).ToArray());
        trainables?.Commit();
        writer.Commit();
        return writer.Weights.Layout.Count + (trainables?.Layout.Count ?? 0);
    }

    /// <summary>A full tensor of an adapter output: a base-layer copy byte for byte, else the weighted mean.</summary>
    private void WriteFull(TensorInfo target, PlannedFullTensor f, WriteQueue queue, TileWriter tiles)
    {
        _ct.ThrowIfCancellationRequested();
        BeforeTensor?.Invoke(target.Name);
        if (f.IsMean) FullTensors.WriteMean(target, f, _plan, queue, _progress, _ct);
        else tiles.Copy(target, f.Sources[0].File, f.Sources[0].Info);
        _progress?.Advance(0, target.Name);
    }

    /// <summary>
    /// The written config: the most common (rank, alpha) as r / lora_alpha, the others in
    /// rank_pattern / alpha_pattern keyed by module path. Each module's alpha is the one that makes
    /// PEFT's scale (α/r, or α/√r with rsLoRA) equal the merged result's scale exactly.
    /// </summary>
    /// <remarks>
    /// Plain loops over reference types: this runs once, at the end of a merge, where LINQ over value
    /// tuples makes the JIT compile generic code that no other call reuses.
    /// </remarks>
    private JsonObject AdapterConfigFor(List<WrittenModule> written, AdapterConfig first)
    {
        // rsLoRA is kept only when every module still carries the input's α/√r scaling (copa-official).
        bool rs = first.UseRsLora && written.Count > 0;
        foreach (var w in written)
            if (!Close(w.Scale, w.Alpha / Math.Sqrt(w.Rank)) || w.Scale == 1) rs = false;
        var alphas = new List<WrittenModule>(written.Count);
        foreach (var w in written)
        {
            double denom = rs ? Math.Sqrt(w.Rank) : w.Rank;
            alphas.Add(w with { Alpha = Close(w.Scale, w.Alpha / denom) ? w.Alpha : w.Scale * denom });
        }
        // The most common (rank, alpha); ties go to the smaller rank, then to the one seen first.
        var (r, alpha) = (first.R, first.LoraAlpha);
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        var seen = new List<WrittenModule>();
        static string Key(WrittenModule x) => x.Rank + "/" + BitConverter.DoubleToInt64Bits(x.Alpha);
        foreach (var x in alphas)
        {
            var key = Key(x);
            if (!counts.TryGetValue(key, out int c)) seen.Add(x);
            counts[key] = c + 1;
        }
        int best = 0;
        foreach (var x in seen)
        {
            int c = counts[Key(x)];
            if (c > best || (c == best && x.Rank < r)) (best, r, alpha) = (c, x.Rank, x.Alpha);
        }
        var rankPattern = new Dictionary<string, int>(StringComparer.Ordinal);
        var alphaPattern = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var x in alphas)
        {
            if (x.Rank != r) rankPattern[x.Path] = x.Rank;
            if (x.Alpha != alpha) alphaPattern[x.Path] = x.Alpha;
        }
        var targets = new List<string>(_plan.Modules.Count);
        foreach (var m in _plan.Modules) targets.Add(m.Path[(m.Path.LastIndexOf('.') + 1)..]);
        return AdapterWriter.MakeConfig(r, alpha, targets, first.BaseModelNameOrPath, first.Raw, rs, rankPattern, alphaPattern);
    }

    /// <summary>One module as written to an adapter: its rank, the scale its factors are meant with, and its alpha.</summary>
    private sealed record WrittenModule(string Path, int Rank, double Scale, double Alpha);

    private static bool Close(double a, double b) => Math.Abs(a - b) <= 1e-12 * Math.Max(Math.Abs(a), Math.Abs(b));

    // ---- model and delta output ----

    private int WriteSharded(string dir)
    {
        bool model = _plan.Request.Mode == OutputMode.Model;
        var byTensor = _plan.Modules.ToDictionary(m => m.TensorName, StringComparer.Ordinal);
        // Model output: a trained full tensor is written in place of the base's; a base-layer copy is the base
        // that its module's ΔW is added to, as PEFT loads it in place of the base's weight.
        var fullByBase = model ? _plan.FullTensors.ToDictionary(f => f.BaseTensor, StringComparer.Ordinal) : [];
        var baseModel = _plan.Base;
        var meta = new Dictionary<string, string>(StringComparer.Ordinal);
        if (model && baseModel!.Shards[0].Metadata is { } bm)
            foreach (var (k, v) in bm) meta[k] = v;
        meta.TryAdd("format", "pt");
        foreach (var (k, v) in Provenance()) meta[k] = v;
        var indexMeta = model ? baseModel!.IndexMetadata.Where(kv => kv.Key != "total_size").ToDictionary() : null;
        using var writer = new ShardedWriter(dir, _plan.Shards, meta, indexMeta, _plan.ShardNames, flushToDisk: false);
        var order = writer.WriteOrder.ToList();
        _progress?.Start(writer.TotalSize, order.Count);
        // Outlives the queue: the writer thread writes from its result buffers until it has drained.
        using var staging = new TileStaging(_backend);
        using (var queue = new WriteQueue(writer.For, _timeline))
        using (var feed = new ModuleFeed(_plan, _pool, DeferReads, _ct))
        {
            var tiles = new TileWriter(_backend, queue, staging, _progress, _ct);
            foreach (var t in order)
            {
                _ct.ThrowIfCancellationRequested();
                BeforeTensor?.Invoke(t.Name);
                ITensorFile? file = null;
                TensorInfo? source = null;
                if (model)
                {
                    if (!baseModel!.TryGet(t.Name, out var baseFile, out source))
                        throw new InvalidOperationException($"{t.Name} planned but not in the base");
                    file = baseFile;
                }
                if (fullByBase.TryGetValue(t.Name, out var f))
                {
                    if (f.IsMean)
                    {
                        FullTensors.WriteMean(t, f, _plan, queue, _progress, _ct);
                        _progress?.Advance(0, t.Name);
                        continue;
                    }
                    (file, source) = (f.Sources[0].File, f.Sources[0].Info);
                }
                if (byTensor.TryGetValue(t.Name, out var m))
                {
                    try
                    {
                        var result = Merge(feed, m);
                        int rows = _plan.TileRowsFor(m);
                        if (result is LowRankResult lr) tiles.LowRank(t, m, lr, file, source, rows);
                        else tiles.Dense(t, m, ((DenseResult)result).Delta, file, source, rows);
                    }
                    catch (NonFiniteResultException e) { throw Overflow(m, e); }
                }
                else
                {
                    try { tiles.Copy(t, file!, source!); }
                    catch (NonFiniteResultException e)
                    {
                        throw new CopaInputException(file!.Path, t.Name,
                            $"does not fit {e.DType}: a value{e.Where} is out of its range (`out-dtype` {e.DType.ToLowerInvariant()}); keep the base's dtype");
                    }
                }
                _progress?.Advance(0, t.Name);
            }
            queue.Complete();
        }
        writer.Commit();
        if (model) CopySideFiles(dir);
        return order.Count;
    }

    /// <summary>
    /// A merged model must load like its base: copy the base folder's configuration and tokenizer
    /// files. Weights in other formats (.bin, .pt, .gguf, ...) are left out: they would be stale.
    /// </summary>
    private void CopySideFiles(string dir)
    {
        var b = _plan.Base!;
        var folder = Directory.Exists(b.Path) ? b.Path : Path.GetDirectoryName(Path.GetFullPath(b.IndexPath ?? b.Shards[0].Path))!;
        if (!Directory.Exists(b.Path) && b.IndexPath == null) return; // a lone .safetensors file: nothing beside it is ours to copy
        string[] skip = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".index.json"];
        foreach (var f in Directory.EnumerateFiles(folder))
        {
            var name = Path.GetFileName(f);
            if (skip.Any(s => name.EndsWith(s, StringComparison.OrdinalIgnoreCase)) || name.StartsWith('.')) continue;
            if (name == MergeReport.FileName) continue;
            File.Copy(f, Path.Combine(dir, name));
        }
    }

    // ---- shared ----

    /// <summary>Working memory of a dense module above which the previous module's garbage is collected first.</summary>
    private const long DenseCollectBytes = 256L << 20;

    /// <summary>Whether the feed hands out factors still in their files, for the route to read each where it trims it.</summary>
    private bool DeferReads => _route.ReadsWhereItTrims && _plan.Method is ITrimsEveryFactorFirst;

    private ModuleResult Merge(ModuleFeed feed, PlannedModule m)
    {
        var input = feed.Take(m);
        _ct.ThrowIfCancellationRequested();
        // Dense modules allocate and drop arrays of hundreds of MB (task deltas, their trims, the result);
        // collect the previous module's before this one allocates, or the garbage of two modules can be
        // resident at once and the peak outgrows --max-memory. A small live heap makes this cheap.
        if (m.Form.IsDense && m.WorkingBytes >= DenseCollectBytes)
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: false);
        var sw = Stopwatch.StartNew();
        _compute.Start();
        ModuleResult result;
        try { result = _plan.Method.MergeModule(_route, input, _plan.Request.Options); }
        catch (TaskInputException e) { throw _plan.Named(e); }
        double? truncation = null;
        if (_plan.Request.Rank is { } n && result is LowRankResult lr)
        {
            // Fold the LoRA scale into B so the re-ranked pair reproduces the update with scale 1.
            var b = lr.Scale == 1.0 ? lr.B : FactorSpace.Scaled(lr.B, (float)lr.Scale);
            // The SVD needs finite factors; an overflow in them is the merge's, reported as at the encoders.
            if (NonFinite.Any(b)) throw new NonFiniteResultException(LoraAdapter.KeyB(m.Path, m.Embedding), -1, 0, "F32");
            if (NonFinite.Any(lr.A)) throw new NonFiniteResultException(LoraAdapter.KeyA(m.Path, m.Embedding), -1, 0, "F32");
            var t = LowRankTruncation.Truncate(b, lr.A, m.DOut, lr.Rank, m.DIn, n, parallel: _route.Parallel);
            truncation = t.RelativeError;
            _maxTruncationError = Math.Max(_maxTruncationError, t.RelativeError);
            result = new LowRankResult(t.B, t.A, n, 1.0, n) { Stats = lr.Stats };
        }
        _compute.Stop();
        _spectra.Capture(m, result);
        feed.Recycle(input, result);
        var s = result.Stats;
        _reports.Add(new MergeReport.ModuleReport(m.Path, m.DOut, m.DIn, m.Ranks,
            result is LowRankResult l ? l.Rank : 0, result is DenseResult, s.ThresholdsA, s.ThresholdsB, s.Kept, s.Total,
            s.ZeroDenominatorRows, truncation, sw.Elapsed.TotalSeconds, m.Adapters.Count == _plan.Adapters.Count ? null : m.Adapters,
            s.KeptFractionA.Count > 0 ? s.KeptFractionA : null, s.KeptFractionB.Count > 0 ? s.KeptFractionB : null,
            s.Scales.Count > 0 ? s.Scales : null, truncation is { } err ? 1 - err * err : null));
        return result;
    }

    /// <summary>
    /// The error for a merged value that came out NaN or Inf: the input's, naming it, when one of the module's
    /// factors holds NaN or Inf (a method without a trim passes them on); else an overflow, naming the
    /// module's output tensor and the parameters and scales that multiplied the values.
    /// </summary>
    private CopaInputException Overflow(PlannedModule m, NonFiniteResultException e)
    {
        foreach (var a in _plan.Adapters)
        {
            if (!a.TryGetModule(m.Path, out var lm)) continue;
            foreach (var t in (ReadOnlySpan<TensorInfo>)[lm.A, lm.B])
                if (NonFinite.Any(a.Weights.ReadSingles(t)))
                    return new CopaInputException(a.Weights.Path, t.Name, "holds NaN or Inf");
        }
        var o = _plan.Request.Options;
        var d = o.Declared;
        var causes = new List<string>();
        if (d.Reads(MergeParameter.Lambda)) causes.Add($"lambda {MergeErrors.G(o.EffectiveLambda)}");
        if (d.Reads(MergeParameter.Weights) && o.Weights is { Count: > 0 } w) causes.Add($"weights {string.Join(", ", w.Select(MergeErrors.G))}");
        causes.Add("LoRA scales (lora_alpha / r) " + string.Join(", ", m.Adapters.Select(n => _plan.Adapters[n].TryGetModule(m.Path, out var lm) ? MergeErrors.G(lm.Scale) : "?")));
        // The methods name factors by the linear keys; an embedding's are PEFT's lora_embedding_A/B.
        var tensor = !m.Embedding ? e.Tensor
            : e.Tensor == LoraAdapter.KeyA(m.Path) ? LoraAdapter.KeyA(m.Path, embedding: true)
            : e.Tensor == LoraAdapter.KeyB(m.Path) ? LoraAdapter.KeyB(m.Path, embedding: true) : e.Tensor;
        return new CopaInputException(_plan.Request.Output, tensor,
            $"merged values overflow {e.DType} (NaN or Inf{e.Where}) though every input value is finite; the merge multiplied them by " +
            string.Join(", ", causes) + ": lower them");
    }

    /// <summary>Provenance in every written safetensors file's <c>__metadata__</c> (strings only, as the format requires).</summary>
    private Dictionary<string, string> Provenance()
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(1024);
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("tool", ToolName);
            w.WriteString("method", _plan.Method.Name);
            MergeReport.WriteParameters(w, Parameters());
            w.WriteStartArray("adapters");
            foreach (var a in _plan.Adapters)
            {
                w.WriteStartObject();
                w.WriteString("path", Path.GetFullPath(a.Folder));
                w.WriteNumber("bytes", a.Weights.FileLength);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            if (_plan.Base is { } b) w.WriteString("base", Path.GetFullPath(b.Path));
            w.WriteEndObject();
        }
        return new Dictionary<string, string> { ["copa_merge"] = System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan) };
    }

    /// <summary>The parameters in effect: those the method reads (defaults filled in), and the output rank.</summary>
    private SortedDictionary<string, object?> Parameters()
    {
        var o = _plan.Request.Options;
        var d = o.Declared;
        var p = new SortedDictionary<string, object?>(StringComparer.Ordinal)
        {
            ["rank"] = _plan.Request.Rank is { } r ? r : "sum",
        };
        if (d.Reads(MergeParameter.Density)) p["density"] = o.EffectiveDensity;
        if (d.Reads(MergeParameter.Lambda)) p["lambda"] = o.EffectiveLambda;
        if (d.Reads(MergeParameter.Clamp)) p["clamp"] = o.EffectiveClamp;
        if (d.Reads(MergeParameter.Normalize)) p["normalize"] = o.EffectiveNormalize;
        if (d.Reads(MergeParameter.PcbRatio)) p["pcb_ratio"] = o.EffectivePcbRatio;
        if (d.Reads(MergeParameter.Seed)) p["seed"] = o.EffectiveSeed;
        if (d.Reads(MergeParameter.Space)) p["space"] = o.EffectiveSpace.ToString().ToLowerInvariant();
        if (d.Reads(MergeParameter.Weights)) p["weights"] = Enumerable.Range(0, _plan.Adapters.Count).Select(o.WeightOf).ToArray();
        return p;
    }

    /// <summary>"copa MAJOR.MINOR.PATCH" (not the assembly version: MinVer keeps that at MAJOR.0.0.0).</summary>
    private static readonly string ToolName = "copa " + ReleaseVersion();

    /// <summary>
    /// The release this build belongs to, MAJOR.MINOR.PATCH of its package version (MinVer: 1.2.3 on the tag
    /// v1.2.3, 1.2.4-alpha.0.N after it, 0.0.0-alpha.0.N before any tag): the provenance written into every
    /// output names the release, not the commit, so two builds of one release that compute the same merge
    /// write the same bytes (comparisons across a refactor rely on it). <c>copa --version</c> gives the commit.
    /// </summary>
    private static string ReleaseVersion()
    {
        var informational = typeof(MergeRunner).Assembly
            .GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        if (string.IsNullOrEmpty(informational))
            return typeof(MergeRunner).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";
        int end = informational.IndexOfAny(['-', '+']);
        return end < 0 ? informational : informational[..end];
    }

    private MergeReport MakeReport(int tensors, double planSeconds, double totalSeconds)
    {
        var r = _plan.Request;
        return new MergeReport
        {
            Tool = ToolName,
            FinishedUtc = DateTime.UtcNow,
            Method = _plan.Method.Name,
            Parameters = Parameters(),
            Adapters = _plan.Adapters.Select(a => new MergeReport.InputFile(Path.GetFullPath(a.Weights.Path), a.Weights.FileLength)).ToList(),
            Base = _plan.Base?.Shards.Select(s => new MergeReport.InputFile(Path.GetFullPath(s.Path), s.FileLength)).ToList(),
            Output = new MergeReport.OutputInfo(Path.GetFullPath(r.Output), r.Mode.ToString().ToLowerInvariant(),
                _plan.OutDType?.ToString(), _plan.OutputBytes, tensors,
                r.Mode == OutputMode.Adapter && _plan.Modules.Select(m => m.OutRank).Distinct().Count() == 1 ? _plan.Modules[0].OutRank : null,
                r.Sync),
            Device = _backend.Name,
            TimingsSeconds = new SortedDictionary<string, double>(StringComparer.Ordinal)
            {
                ["plan"] = Math.Round(planSeconds, 4),
                ["merge_compute"] = Math.Round(_compute.Elapsed.TotalSeconds, 4),
                ["stream_total"] = Math.Round(totalSeconds, 4),
            },
            Memory = new MergeReport.MemoryInfo(r.MaxMemory, _plan.EstimatedPeakBytes, PeakRss(), _plan.TileBytes, _plan.Prefetch),
            Summary = new MergeReport.Totals(_reports.Count, _reports.Sum(x => x.Kept), _reports.Sum(x => x.Considered),
                _reports.Sum(x => x.ZeroDenominatorRows), _maxTruncationError),
            Modules = _reports,
            FullTensors = _plan.FullTensors.Count == 0 ? null : _plan.FullTensors.Select(f => new MergeReport.FullTensorReport(f.Key,
                f.Kind switch { FullTensorKind.ModulesToSave => "modules_to_save", FullTensorKind.Trainable => LoraAdapter.TrainablesName, _ => "base_layer" },
                !f.IsMean ? "copy" : _plan.Request.Options.Declared.Reads(MergeParameter.Weights) && r.Options.Weights is { Count: > 0 } ? "weighted_mean" : "mean",
                f.Adapters)).ToList(),
        };
    }

    /// <summary>The process's peak resident set (VmHWM) in bytes, or the working set where /proc is absent.</summary>
    public static long PeakRss()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line[6..].Trim().Split(' ')[0]) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return Process.GetCurrentProcess().PeakWorkingSet64;
    }
}
