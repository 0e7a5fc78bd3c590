using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// Checks a whole merge job from headers alone, before any heavy read: parameters, adapters (key sets,
/// shapes, ranks, dtypes), the base model mapping, the output folder, disk space and the memory budget.
/// Every problem is a <see cref="CopaInputException"/> naming the file and, where there is one, the tensor.
/// </summary>
public static class MergePlanner
{
    /// <summary>Smallest accepted <see cref="MergeRequest.MaxMemory"/>.</summary>
    public const long MinMaxMemory = 64L << 20;

    /// <summary>Largest product tile worth having: bigger tiles add memory, not speed.</summary>
    internal const long MaxTileBytes = 64L << 20;

    /// <summary>Chunk buffers for copying and converting untouched tensors: the queue's and the one being filled, 4 MiB each.</summary>
    internal const long CopyBufferBytes = (WriteQueue.Depth + 2) * (long)TileWriter.CopyChunkBytes;

    /// <summary>Plans <paramref name="request"/>; the returned plan owns the opened inputs.</summary>
    public static MergePlan Plan(MergeRequest request)
    {
        var o = request.Options;
        if (request.Adapters.Count == 0) throw new CopaInputException(null, null, "no adapters given (`adapter`: a PEFT folder, repeatable)");
        o.Validate(request.Adapters.Count);
        var method = MergeMethods.Get(o.Method);
        if (request.Rank is <= 0) throw new CopaInputException(null, null, $"rank {request.Rank} must be 'sum' or a positive integer");
        if (request.OutDType is { } od && !od.IsMergeFloat()) throw new CopaInputException(null, null, $"out-dtype {od} must be bf16, f16 or f32");
        if (request.MaxMemory < MinMaxMemory)
            throw new CopaInputException(null, null, $"max-memory {MemorySize.Format(request.MaxMemory)} is below the minimum {MemorySize.Format(MinMaxMemory)}");
        if (request.ShardSize is <= 0) throw new CopaInputException(null, null, "shard-size must be positive");
        if (request.Mode == OutputMode.Model && request.Base == null)
            throw new CopaInputException(null, null, "model output needs `base` (the base model's folder, index or file)");
        if (request.Mode == OutputMode.Adapter && request.ShardSize != null)
            throw new CopaInputException(null, null, "`shard-size` applies to model and delta output; an adapter is one file");
        var output = CheckOutputPath(request);

        var adapters = new List<LoraAdapter>();
        ShardedModel? baseModel = null;
        try
        {
            foreach (var dir in request.Adapters) adapters.Add(LoraAdapter.Open(dir));
            if (request.Base != null) baseModel = OpenBase(request.Base);
            var plan = new MergePlan(request, method, adapters, baseModel);
            foreach (var a in adapters) Record(plan, Path.Combine(a.Folder, AdapterConfig.FileName));
            if (baseModel?.IndexPath is { } index) Record(plan, index);
            Fill(plan, output);
            return plan;
        }
        catch
        {
            foreach (var a in adapters) a.Dispose();
            baseModel?.Dispose();
            throw;
        }
    }

    private static void Record(MergePlan plan, string path)
    {
        if (FileIdentity.Of(path) is { } id) plan.ReadFiles.Add((path, id));
    }

    private static ShardedModel OpenBase(string path)
    {
        if (!File.Exists(path) && !Directory.Exists(path)) throw new CopaInputException(path, null, "base model not found");
        return ShardedModel.Open(path);
    }

    private static void Fill(MergePlan plan, string output)
    {
        var request = plan.Request;
        var adapters = plan.Adapters;
        var sources = AdapterModules.Plan(adapters);
        bool fanInFanOut = adapters[0].Config.FanInFanOut;
        foreach (var a in adapters)
            if (a.Config.FanInFanOut != fanInFanOut)
                throw new CopaInputException(Path.Combine(a.Folder, AdapterConfig.FileName), null,
                    $"fan_in_fan_out is {a.Config.FanInFanOut.ToString().ToLowerInvariant()} here but {fanInFanOut.ToString().ToLowerInvariant()} in {adapters[0].Folder}; adapters of one base must agree");

        var modules = new Dictionary<string, PlannedModule>(StringComparer.Ordinal);
        foreach (var source in sources)
        {
            var path = source.Path;
            var per = new List<LoraModule>(source.Adapters.Count);
            for (int i = 0; i < source.Adapters.Count; i++)
            {
                int holder = source.Adapters[i];
                per.Add(adapters[holder].TryGetModule(path, out var lm) ? lm
                    : throw new InvalidOperationException($"{path} was planned but is not in {adapters[holder].Folder}"));
            }
            ResultForm form;
            try { form = plan.Method.Plan(path, per.Select(m => (m.Rank, m.Alpha)).ToList(), request.Options); }
            catch (TaskInputException e) { throw plan.Named(e, source.Adapters); }
            var first = per[0];
            int dOut = checked((int)first.DOut), dIn = checked((int)first.DIn);
            int outRank = form.Rank;
            if (request.Rank is { } n)
            {
                if (form.IsDense)
                    throw new CopaInputException(adapters[source.Adapters[0]].Folder, path,
                        $"{plan.Method.Name} in {request.Options.EffectiveSpace.ToString().ToLowerInvariant()} space gives a dense ΔW; `rank` needs a low-rank result (use `space` factors, or leave `rank` out)");
                if (n > form.Rank)
                    throw new CopaInputException(adapters[source.Adapters[0]].Folder, path,
                        $"`rank` {n} is above the merged rank {form.Rank} of this module; an exact re-rank cannot raise the rank (use `rank` sum)");
                outRank = n;
            }
            else if (form.IsDense && request.Mode == OutputMode.Adapter)
                throw new CopaInputException(adapters[source.Adapters[0]].Folder, path,
                    $"{plan.Method.Name} in delta space gives a dense ΔW, which an adapter cannot hold exactly; use `output` model or delta, or `space` factors");
            // An embedding's weight is num_embeddings × embedding_dim, ΔW = (B·A)ᵀ whatever fan_in_fan_out says (PEFT's
            // Embedding layer ignores it).
            modules[path] = new PlannedModule(path, dOut, dIn, per.Select(m => m.Rank).ToList(), form, outRank, first.BaseTensor,
                first.Embedding || fanInFanOut, 0, source.Adapters, first.Embedding);
            modules[path] = modules[path] with { WorkingBytes = Working(modules[path], per.Count, request.Rank != null) };
        }

        if (plan.Base != null) CheckBase(plan, modules.Values);
        plan.FullTensors = FullTensors.Plan(plan, modules);
        if (plan.Base != null) CheckBaseOfFullTensors(plan);

        switch (request.Mode)
        {
            case OutputMode.Adapter:
                PlanAdapter(plan, modules);
                break;
            case OutputMode.Model:
                PlanModel(plan, modules);
                break;
            default:
                PlanDelta(plan, modules);
                break;
        }
        PlanMemory(plan);
        CheckDiskSpace(plan, output);
    }

    /// <summary>Working memory of one module (see README "Memory"): inputs, the method's copies, the result.</summary>
    private static long Working(PlannedModule m, int tasks, bool rerank)
    {
        long input = m.InputBytes;
        if (m.Form.IsDense)
            // N dense task deltas, a packed copy of them where a device backend trims, the method's own
            // arrays (its result included), and two more for what the GC has not reclaimed yet (the
            // measured peak that sets this is in bench/RESULTS.md).
            return (2L * tasks + m.Form.DenseArrays + 2) * m.DOut * (long)m.DIn * sizeof(float) + 2 * input;
        long result = (long)m.Form.Rank * (m.DIn + m.DOut) * sizeof(float);
        // Trimmed copies, packed backend buffers, their host staging (device backends: PackedTensors) and
        // downloads each hold about one copy of the inputs.
        long w = 6 * input + 2 * result;
        if (rerank) w += 2 * (long)m.Form.Rank * (m.DIn + m.DOut) * sizeof(double) + 2L * m.Form.Rank * m.Form.Rank * sizeof(double);
        return w;
    }

    private static void CheckBase(MergePlan plan, IEnumerable<PlannedModule> modules)
    {
        var b = plan.Base!;
        foreach (var m in modules)
        {
            var adapterFile = plan.Adapters[m.Adapters[0]].Weights.Path;
            if (!b.TryGet(m.TensorName, out var file, out var info))
                throw new CopaInputException(adapterFile, LoraAdapter.KeyA(m.Path, m.Embedding),
                    $"targets base tensor '{m.TensorName}', which is not in the base model {b.Path}");
            long rows = m.Transposed ? m.DIn : m.DOut, cols = m.Transposed ? m.DOut : m.DIn;
            if (info.Shape.Length != 2 || info.Shape[0] != rows || info.Shape[1] != cols)
                throw new CopaInputException(file.Path, m.TensorName,
                    $"base weight is {info.ShapeText} but the adapters' module is {m.DOut} × {m.DIn}" + (m.Embedding ? " (an embedding: expected num_embeddings × embedding_dim, the transpose)" : m.Transposed ? " (fan_in_fan_out: expected transposed)" : ""));
            if (!info.DType.IsMergeFloat())
                throw new CopaInputException(file.Path, m.TensorName, $"base weight dtype {info.DType} cannot take a merged update (F32, F16 or BF16 needed)");
        }
    }

    /// <summary>A full tensor replaces the base's tensor of that name: it must be there, float, of the same shape.</summary>
    private static void CheckBaseOfFullTensors(MergePlan plan)
    {
        var b = plan.Base!;
        foreach (var f in plan.FullTensors)
        {
            var src = f.Sources[0];
            if (!b.TryGet(f.BaseTensor, out var file, out var info))
            {
                if (plan.Request.Mode != OutputMode.Model) continue;
                throw new CopaInputException(src.File.Path, f.Key, $"stands for base tensor '{f.BaseTensor}', which is not in the base model {b.Path}");
            }
            if (!info.Shape.SequenceEqual(f.Shape))
                throw new CopaInputException(src.File.Path, f.Key, $"shape {src.Info.ShapeText} but the base's {f.BaseTensor} is {info.ShapeText} in {file.Path}" +
                    (f.Kind == FullTensorKind.BaseLayer ? " (resize the base's embeddings as the adapter's were)" : ""));
            if (!info.DType.IsMergeFloat())
                throw new CopaInputException(file.Path, f.BaseTensor, $"base dtype {info.DType} cannot take the merged full tensor {f.Key} (F32, F16 or BF16 needed)");
        }
    }

    private static void PlanAdapter(MergePlan plan, Dictionary<string, PlannedModule> modules)
    {
        // The inputs' one dtype, else F32 (a loop: LINQ's Distinct over an enum compiles generic code at start).
        DType? common = null;
        bool mixed = false;
        foreach (var a in plan.Adapters)
            foreach (var m in a.Modules)
                foreach (var d in (ReadOnlySpan<DType>)[m.A.DType, m.B.DType])
                {
                    mixed |= common is { } c && c != d;
                    common ??= d;
                }
        plan.OutDType = plan.Request.OutDType ?? (mixed || common is null ? DType.F32 : common.Value);
        // Plain loops, each key built once: the LINQ chain this replaced cost more at start than the whole
        // layout (bench/RESULTS.md, issue #15).
        var byKey = new Dictionary<string, PlannedModule>(2 * modules.Count, StringComparer.Ordinal);
        var specs = new List<TensorSpec>(2 * modules.Count + plan.FullTensors.Count);
        foreach (var m in modules.Values)
        {
            var a = LoraAdapter.KeyA(m.Path, m.Embedding);
            var b = LoraAdapter.KeyB(m.Path, m.Embedding);
            byKey[a] = m;
            byKey[b] = m;
            specs.Add(new TensorSpec(a, plan.OutDType.Value, [m.OutRank, m.DIn]));
            specs.Add(new TensorSpec(b, plan.OutDType.Value, [m.DOut, m.OutRank]));
        }
        if (plan.FullTensors.Count > 0) specs.AddRange(FullTensors.AdapterSpecs(plan, inTrainablesFile: false));
        var layout = SafetensorsWriter.PlanLayout(specs);
        // A module's two factors are next to each other in the layout: each module once, in layout order.
        var order = new List<PlannedModule>(modules.Count);
        foreach (var t in layout)
            if (byKey.TryGetValue(t.Name, out var m) && (order.Count == 0 || !ReferenceEquals(order[^1], m))) order.Add(m);
        plan.Modules = order;
        plan.OutputBytes = layout.Count == 0 ? 0 : layout[^1].End;
        if (plan.FullTensors.Any(f => f.InTrainablesFile))
        {
            var trainables = SafetensorsWriter.PlanLayout(FullTensors.AdapterSpecs(plan, inTrainablesFile: true));
            plan.OutputBytes += trainables[^1].End;
        }
    }

    private static void PlanModel(MergePlan plan, Dictionary<string, PlannedModule> modules)
    {
        var b = plan.Base!;
        var request = plan.Request;
        DType Out(TensorInfo t) => request.OutDType is { } d && t.DType.IsMergeFloat() ? d : t.DType;
        plan.OutDType = request.OutDType;
        var perShard = b.Shards.Select(s => (IReadOnlyList<TensorSpec>)s.Tensors.Select(t => new TensorSpec(t.Name, Out(t), t.Shape)).ToList()).ToList();
        if (request.ShardSize is { } size)
        {
            plan.Shards = ShardedWriter.PlanBySize(perShard.SelectMany(s => s), size);
            plan.ShardNames = null;
        }
        else
        {
            plan.Shards = perShard;
            plan.ShardNames = b.Shards.Select(s => Path.GetFileName(s.Path)).ToList();
        }
        OrderByWrites(plan, modules);
    }

    private static void PlanDelta(MergePlan plan, Dictionary<string, PlannedModule> modules)
    {
        // ΔW is what LoRA adds; a trained full tensor replaces a weight, which no ΔW file can say. A base-layer copy
        // changes no ΔW (its module's ΔW is computed from the factors alone), so it is left out here.
        if (plan.FullTensors.FirstOrDefault(f => f.IsMean) is { } full)
            throw new CopaInputException(full.Sources[0].File.Path, full.Key,
                "a full tensor (trained copy, not a LoRA update) cannot go into delta output, which holds ΔW only; use adapter or model output");
        var dtype = plan.Request.OutDType ?? DType.F32;
        plan.OutDType = dtype;
        var specs = modules.Values
            .Select(m => new TensorSpec(m.TensorName, dtype, [m.ProductRows, m.ProductCols]))
            .OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        plan.Shards = ShardedWriter.PlanBySize(specs, plan.Request.ShardSize ?? MergeRequest.DefaultDeltaShardSize);
        plan.ShardNames = null;
        OrderByWrites(plan, modules);
    }

    /// <summary>Modules in the order their tensors are written (shard by shard, each in its layout order).</summary>
    private static void OrderByWrites(MergePlan plan, Dictionary<string, PlannedModule> modules)
    {
        var byTensor = modules.Values.ToDictionary(m => m.TensorName, StringComparer.Ordinal);
        var order = new List<PlannedModule>();
        long bytes = 0;
        foreach (var shard in plan.Shards)
        {
            var layout = SafetensorsWriter.PlanLayout(shard);
            foreach (var t in layout)
                if (byTensor.TryGetValue(t.Name, out var m)) order.Add(m);
            bytes += layout.Count == 0 ? 0 : layout[^1].End;
        }
        plan.Modules = order;
        plan.OutputBytes = bytes;
    }

    private static void PlanMemory(MergePlan plan)
    {
        long budget = plan.Request.MaxMemory;
        var worst = plan.Modules.MaxBy(m => m.WorkingBytes);
        long working = worst?.WorkingBytes ?? 0;
        long maxInput = plan.Modules.Count == 0 ? 0 : plan.Modules.Max(m => m.InputBytes);
        bool tiled = plan.Request.Mode != OutputMode.Adapter;
        long widest = plan.Modules.Count == 0 ? 1 : plan.Modules.Max(m => (long)m.ProductCols);
        long minTile = tiled ? widest * MergePlan.TileBytesPerElement : 0;
        long fixedBytes = CopyBufferBytes + minTile + (plan.FullTensors.Count > 0 ? FullTensors.WorkingBytes : 0);
        if (worst != null && working + fixedBytes > budget)
            throw new CopaInputException(plan.Adapters[0].Folder, worst.Path,
                $"merging this module needs about {MemorySize.Format(working + fixedBytes)} of working memory" +
                (worst.Form.IsDense ? $" ({worst.Ranks.Count} dense {worst.DOut} × {worst.DIn} task deltas)" : "") +
                $", above `max-memory` {MemorySize.Format(budget)}; raise `max-memory`" + (worst.Form.IsDense ? " or use `space` factors" : ""));
        plan.Prefetch = working + maxInput + fixedBytes <= budget;
        long rest = budget - working - (plan.Prefetch ? maxInput : 0) - CopyBufferBytes;
        plan.TileBytes = tiled ? Math.Clamp(rest, minTile, MaxTileBytes) : 0;
        plan.EstimatedPeakBytes = working + (plan.Prefetch ? maxInput : 0) + plan.TileBytes + CopyBufferBytes;
    }

    /// <summary>
    /// The output must be a new or empty folder that is neither an input nor inside one, and contains
    /// none. Compared as real paths: a symbolic link anywhere in <c>--out</c>, <c>--adapter</c> or
    /// <c>--base</c> (<c>ln -s ADAPTER lnk; --out lnk/merged</c>) must not hide that they meet.
    /// Returns the output's real path.
    /// </summary>
    private static string CheckOutputPath(MergeRequest request)
    {
        if (string.IsNullOrEmpty(request.Output)) throw new CopaInputException(null, null, "`out` is empty; give the output folder");
        var output = RealPath.OfInput(request.Output);
        if (Path.GetDirectoryName(output) == null)
            throw new CopaInputException(request.Output, null, "the output cannot be a root folder");
        var inputs = request.Adapters.Select(a => (Path: a, Folder: true)).ToList();
        if (request.Base != null) inputs.Add((request.Base, Directory.Exists(request.Base)));
        foreach (var (path, folder) in inputs)
        {
            if (string.IsNullOrEmpty(path)) continue; // reported as not found when opened
            var input = RealPath.OfInput(path);
            if (Same(output, input) || (folder && RealPath.IsInside(output, input)))
                throw new CopaInputException(request.Output, null, $"output must not be an input or lie inside one ({path})");
            if (RealPath.IsInside(input, output))
                throw new CopaInputException(request.Output, null, $"output must not contain an input ({path})");
        }
        AtomicFolder.CheckDestination(request.Output, output);
        return output;
    }

    /// <param name="plan">The plan (its output size).</param>
    /// <param name="output">The output's real path (<see cref="CheckOutputPath"/>).</param>
    private static void CheckDiskSpace(MergePlan plan, string output)
    {
        try
        {
            var parent = Path.GetDirectoryName(output)!;
            while (!Directory.Exists(parent) && Path.GetDirectoryName(parent) is { } up) parent = up;
            long free = new DriveInfo(parent).AvailableFreeSpace;
            long need = plan.OutputBytes + (1L << 20);
            if (free < need)
                throw new CopaInputException(plan.Request.Output, null,
                    $"the output needs about {MemorySize.Format(need)} but only {MemorySize.Format(free)} is free there");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            // Free space unknown (unusual file system): the write itself will report a full disk.
        }
    }

    private static bool Same(string a, string b) => string.Equals(a, b, StringComparison.Ordinal);
}
