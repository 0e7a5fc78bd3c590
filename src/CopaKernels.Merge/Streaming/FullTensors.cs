using System.Buffers;
using CopaKernels.Formats;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// A full tensor of the merge (SEMANTICS §5): a <c>modules_to_save</c> copy or one of LLaVA's trainables,
/// merged as the weighted mean Σ w_n T_n / Σ w_n over the adapters that have it; or a base-layer copy,
/// which must be the same in every adapter that has it and is carried through.
/// </summary>
/// <param name="Key">The key as stored and as written to an adapter output.</param>
/// <param name="BaseTensor">The base model's tensor it stands for.</param>
/// <param name="Kind">What it is.</param>
/// <param name="Adapters">The adapters that have it (indices into <see cref="MergePlan.Adapters"/>).</param>
/// <param name="Sources">Each of those adapters' tensor, in the same order.</param>
public sealed record PlannedFullTensor(string Key, string BaseTensor, FullTensorKind Kind, IReadOnlyList<int> Adapters, IReadOnlyList<FullTensor> Sources)
{
    /// <summary>The tensor's shape (the same in every source).</summary>
    public long[] Shape => Sources[0].Info.Shape;

    /// <summary>Whether it is merged as a mean (else carried through: a base-layer copy).</summary>
    public bool IsMean => Kind != FullTensorKind.BaseLayer;

    /// <summary>Whether an adapter output writes it to LLaVA's <c>non_lora_trainables.safetensors</c> rather than the weights file.</summary>
    public bool InTrainablesFile => Kind == FullTensorKind.Trainable;

    /// <summary>The inputs' one dtype, else F32.</summary>
    public DType CommonDType => Sources.All(s => s.Info.DType == Sources[0].Info.DType) ? Sources[0].Info.DType : DType.F32;
}

/// <summary>Plans and writes the full tensors.</summary>
internal static class FullTensors
{
    /// <summary>Elements of a full tensor merged at a time.</summary>
    private const int Chunk = 1 << 20;

    /// <summary>Working memory of a mean: one chunk in double and one in float (its output goes through the write queue's buffers).</summary>
    public const long WorkingBytes = Chunk * (sizeof(double) + sizeof(float));

    /// <summary>
    /// Every full tensor of the adapters, by key, checked: the same kind and shape wherever it appears, float,
    /// a base-layer copy byte-identical across adapters (read here, before anything is written), a mean whose
    /// weights do not sum to 0, and no tensor that is a full tensor in one adapter and a LoRA target in another.
    /// </summary>
    public static List<PlannedFullTensor> Plan(MergePlan plan, IReadOnlyDictionary<string, PlannedModule> modules)
    {
        var adapters = plan.Adapters;
        var result = new List<PlannedFullTensor>();
        if (!adapters.Any(a => a.FullTensors.Count > 0)) return result;
        var byKey = new Dictionary<string, List<(int Adapter, FullTensor Tensor)>>(StringComparer.Ordinal);
        for (int n = 0; n < adapters.Count; n++)
            foreach (var f in adapters[n].FullTensors)
            {
                if (!byKey.TryGetValue(f.Key, out var list)) byKey[f.Key] = list = [];
                list.Add((n, f));
            }
        var loraTargets = modules.Values.ToDictionary(m => m.TensorName, StringComparer.Ordinal);
        foreach (var key in byKey.Keys.Order(StringComparer.Ordinal))
        {
            var list = byKey[key];
            var (n0, first) = list[0];
            foreach (var (n, f) in list.Skip(1))
            {
                if (f.Kind != first.Kind)
                    throw new CopaInputException(f.File.Path, key, $"is {Describe(f.Kind)} here but {Describe(first.Kind)} in {adapters[n0].Folder}");
                if (!f.Info.Shape.SequenceEqual(first.Info.Shape))
                    throw new CopaInputException(f.File.Path, key, $"shape {f.Info.ShapeText} here but {first.Info.ShapeText} in {first.File.Path}");
            }
            if (first.Kind != FullTensorKind.BaseLayer && loraTargets.ContainsKey(first.BaseTensor))
            {
                int lora = loraTargets[first.BaseTensor].Adapters[0];
                throw new CopaInputException(first.File.Path, key,
                    $"is a full {Describe(first.Kind)} tensor here but {first.BaseTensor} has LoRA factors in {adapters[lora].Folder}; a trained copy and a LoRA update of one weight do not merge");
            }
            var planned = new PlannedFullTensor(key, first.BaseTensor, first.Kind, list.Select(x => x.Adapter).ToArray(), list.Select(x => x.Tensor).ToArray());
            if (planned.IsMean)
            {
                double sum = planned.Adapters.Sum(n => WeightOf(plan, n));
                if (sum == 0)
                    throw new CopaInputException(null, key, "the weights of the adapters that have this full tensor sum to 0; its weighted mean is undefined");
            }
            else RequireIdentical(planned);
            result.Add(planned);
        }
        return result;
    }

    /// <summary>
    /// An adapter output's specs of the full tensors, in the weights file or LLaVA's trainables file: a
    /// base-layer copy as it is stored (it is carried through), a mean in --out-dtype or else its inputs' dtype.
    /// </summary>
    public static IEnumerable<TensorSpec> AdapterSpecs(MergePlan plan, bool inTrainablesFile) =>
        plan.FullTensors.Where(f => f.InTrainablesFile == inTrainablesFile).Select(f => new TensorSpec(f.Key,
            f.IsMean ? plan.Request.OutDType ?? f.CommonDType : f.Sources[0].Info.DType, f.Shape));

    private static string Describe(FullTensorKind k) => k switch
    {
        FullTensorKind.ModulesToSave => "modules_to_save",
        FullTensorKind.Trainable => LoraAdapter.TrainablesName,
        _ => "base_layer copy",
    };

    /// <summary>w_n for a full tensor's mean: the adapter's weight where the method reads weights, else 1 (a plain mean).</summary>
    public static double WeightOf(MergePlan plan, int adapter) =>
        plan.Request.Options.Declared.Reads(MergeParameter.Weights) ? plan.Request.Options.WeightOf(adapter) : 1.0;

    /// <summary>A base-layer copy is what PEFT loads in place of the base's weight: the adapters must agree on it, byte for byte.</summary>
    /// <remarks>Chunk by chunk, the first copy read once for all the others.</remarks>
    private static void RequireIdentical(PlannedFullTensor t)
    {
        var first = t.Sources[0];
        foreach (var other in t.Sources.Skip(1))
            if (other.Info.DType != first.Info.DType)
                throw new CopaInputException(other.File.Path, t.Key, $"is {other.Info.DType} here but {first.Info.DType} in {first.File.Path}; the adapters' copies of the base weight must be the same");
        const int chunk = 4 << 20;
        var a = ArrayPool<byte>.Shared.Rent(chunk);
        var b = ArrayPool<byte>.Shared.Rent(chunk);
        try
        {
            for (long done = 0; done < first.Info.ByteLength; done += chunk)
            {
                int n = (int)Math.Min(chunk, first.Info.ByteLength - done);
                first.File.ReadBytes(first.Info, done, a.AsSpan(0, n));
                foreach (var other in t.Sources.Skip(1))
                {
                    other.File.ReadBytes(other.Info, done, b.AsSpan(0, n));
                    if (!a.AsSpan(0, n).SequenceEqual(b.AsSpan(0, n)))
                        throw new CopaInputException(other.File.Path, t.Key,
                            $"differs from the copy in {first.File.Path}; PEFT loads this copy in place of the base's weight, so the adapters must agree on it");
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(a);
            ArrayPool<byte>.Shared.Return(b);
        }
    }

    /// <summary>
    /// Writes <paramref name="target"/> as Σ w_n T_n / Σ w_n over the sources, in chunks (accumulated in double,
    /// rounded once to the target's dtype), so a tensor of any size passes through a bounded amount of memory.
    /// A NaN or Inf in a source is that source's error; a mean that does not fit the output dtype is the output's.
    /// </summary>
    public static void WriteMean(TensorInfo target, PlannedFullTensor t, MergePlan plan, WriteQueue queue, IMergeProgress? progress, CancellationToken ct)
    {
        var weights = t.Adapters.Select(n => WeightOf(plan, n)).ToArray();
        double total = weights.Sum();
        int outSize = target.DType.Size();
        const int chunk = Chunk;
        var acc = ArrayPool<double>.Shared.Rent(chunk);
        var values = ArrayPool<float>.Shared.Rent(chunk);
        try
        {
            long count = target.ElementCount;
            for (long done = 0; done < count; done += chunk)
            {
                ct.ThrowIfCancellationRequested();
                int n = (int)Math.Min(chunk, count - done);
                var sum = acc.AsSpan(0, n);
                sum.Clear();
                var v = values.AsSpan(0, n);
                for (int s = 0; s < t.Sources.Count; s++)
                {
                    var src = t.Sources[s];
                    src.File.ReadSingles(src.Info, done, v);
                    if (NonFinite.Any(v)) throw new CopaInputException(src.File.Path, src.Info.Name, "holds NaN or Inf");
                    double w = weights[s];
                    for (int i = 0; i < n; i++) sum[i] += w * v[i];
                }
                for (int i = 0; i < n; i++) v[i] = (float)(sum[i] / total);
                var output = WriteQueue.Rent((long)n * outSize);
                if (!ElementCodec.EncodeChecked(target.DType, v, output.AsSpan(0, n * outSize)))
                    throw new CopaInputException(plan.Request.Output, target.Name,
                        $"the mean of the adapters' copies does not fit {target.DType} (a value beyond its range); choose another `out-dtype`");
                queue.Append(target.Name, output, n * outSize);
                progress?.Advance((long)n * outSize, null);
            }
        }
        finally
        {
            ArrayPool<double>.Shared.Return(acc);
            ArrayPool<float>.Shared.Return(values);
        }
    }
}
