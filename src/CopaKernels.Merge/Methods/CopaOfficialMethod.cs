using CopaKernels.Formats;
using CopaKernels.Formats.Safetensors;
using System.Runtime.InteropServices;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Merge.Methods;

/// <summary>
/// CoPA as released (SPEC §3): the same trim and S with clamp 0.2, then A_m = λ Σ_n Ã_n and
/// B_m = λ Σ_n B̃_n diag(S̃_n), a LoRA of the inputs' rank r with the first adapter's lora_alpha.
/// The effective update (α/r)·B_m·A_m holds the cross-task terms B̃_t·Ã_s, as the released code does.
/// </summary>
public sealed class CopaOfficialMethod : IMergeMethod, IReadsDeferredFactors
{
    /// <inheritdoc/>
    public string Name => "copa-official";

    /// <inheritdoc/>
    public string Description => "CoPA as released (RobustMerge code): clamp 0.2, A = λΣÃ, B = λΣB̃·diag(S̃), rank r";

    /// <inheritdoc/>
    /// <remarks>The released code fixes the clamp at 0.2 and always normalises; it has no weights.</remarks>
    public MethodParameters Parameters { get; } = new()
    {
        Density = 0.2, Lambda = 2.0, Clamp = 0.2, Normalize = true,
        Fixed = new HashSet<MergeParameter> { MergeParameter.Clamp, MergeParameter.Normalize },
    };

    /// <inheritdoc/>
    public ResultForm Plan(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, MergeOptions options)
    {
        RequireShared(path, tasks);
        return ResultForm.LowRank(tasks[0].Rank);
    }

    /// <summary>Throws naming the first adapter whose r or lora_alpha differs from the first's.</summary>
    /// <remarks>Compared field by field: a tuple's default equality comparer is built by reflection at run time.</remarks>
    private static void RequireShared(string path, IReadOnlyList<(int Rank, double Alpha)> tasks)
    {
        for (int i = 1; i < tasks.Count; i++)
            if (tasks[i].Rank != tasks[0].Rank || tasks[i].Alpha != tasks[0].Alpha)
                throw new TaskInputException(i, path, SharedRankMessage(tasks));
    }

    private static string SharedRankMessage(IEnumerable<(int Rank, double Alpha)> tasks) =>
        $"copa-official needs every adapter to share r and lora_alpha (got r = {string.Join("/", tasks.Select(x => x.Rank))}, alpha = {string.Join("/", tasks.Select(x => x.Alpha))})";

    bool IReadsDeferredFactors.ReadsDeferred(IMergeBackend backend) => CopaScaling.ReadsDeferred(backend);

    /// <inheritdoc/>
    public ModuleResult MergeModule(IMergeBackend backend, ModuleInput module, MergeOptions options)
    {
        var first = module.Tasks[0];
        RequireShared(module.Path, module.Tasks.Select(t => (t.Rank, t.Alpha)).ToList());
        var stats = new ModuleStats();
        // On the CPU route with 16-bit factors, each trimmed factor is kept in its stored format in the
        // first half of its own (unread) F32 array, and the sums below widen it block by block.
        (Float16Format, CopaScaling.RawSink)? keep = backend is CpuBackend && CopaScaling.RawFormatOf(module) is { } f
            ? (f, (task, isB, values, threshold) =>
                HostKernels.MaskByMagnitude(values, MemoryMarshal.Cast<float, ushort>((isB ? module.Tasks[task].B : module.Tasks[task].A).AsSpan()), f, threshold))
            : null;
        var scaled = CopaScaling.Compute(backend, module, options.EffectiveDensity, options.EffectiveClamp, normalize: true, stats, keep);
        int r = first.Rank, dOut = module.DOut, dIn = module.DIn, n = module.Tasks.Count;
        float lambda = (float)options.EffectiveLambda;
        // A_m = λ Σ_n Ã_n and B_m = λ Σ_n B̃_n·diag(S̃_n): sums in task order, each product rounded
        // before its add (no fused multiply-add), as the scalar definition.
        var parallel = ModuleOps.HostParallel(backend);
        var coefficients = scaled.S.Select(sn => sn.Select(x => (float)x).ToArray()).ToArray();
        // Adapter output of this exact result: summed straight into the output's bytes (EncodeAs), block by block.
        EncodedFactors? encoded = null;
        float[] a = [], b = [];
        ModuleOps.SumSink aOut, bOut;
        if (module.EncodeAs is { } outType)
        {
            int size = outType.Bits() / 8, aLength = r * dIn * size, bLength = dOut * r * size;
            encoded = new EncodedFactors(outType, Streaming.WriteQueue.Rent(bLength), bLength, Streaming.WriteQueue.Rent(aLength), aLength);
            (aOut, bOut) = (ModuleOps.SumSink.Encoded(outType, encoded.A, Formats.Peft.LoraAdapter.KeyA(module.Path), dIn),
                ModuleOps.SumSink.Encoded(outType, encoded.B, Formats.Peft.LoraAdapter.KeyB(module.Path), r));
        }
        else
        {
            a = module.NewArray(checked(r * dIn));
            b = module.NewArray(checked(dOut * r));
            (aOut, bOut) = (ModuleOps.SumSink.Floats(a), ModuleOps.SumSink.Floats(b));
        }
        if (scaled.Raw is { } format)
            ModuleOps.SumFactorsThenScale(new ModuleOps.Raw16Rows(scaled.ATrimmed, format), new ModuleOps.Raw16Rows(scaled.BTrimmed, format),
                n, coefficients, dOut, r, dIn, lambda, aOut, bOut, parallel);
        else
            ModuleOps.SumFactorsThenScale(new ModuleOps.F32Rows(scaled.ATrimmed), new ModuleOps.F32Rows(scaled.BTrimmed),
                n, coefficients, dOut, r, dIn, lambda, aOut, bOut, parallel);
        return new LowRankResult(b, a, r, first.Scale, first.Alpha) { Stats = stats, Encoded = encoded };
    }
}
