using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Merge.Routes;

/// <summary>
/// Where a merge's steps run and where their factors live, chosen once per merge from the backend
/// (<see cref="For(IMergeBackend)"/>): the host route for a backend whose buffers are host memory (the SIMD
/// CPU backend: kernels on the factor arrays where they lie, 16-bit factors kept at 2 bytes a value, read
/// from the file by the thread that trims them), the device route for the others (factors packed into one
/// device buffer per operation, batched launches, one transfer each way).
/// </summary>
/// <remarks>
/// Methods call these operations and nothing backend-specific, so every method runs on every backend
/// unchanged, and both routes give the same bits: the selection is exact, the row sums and products have
/// one fixed order, and the element-wise steps after them run on the host for both.
/// </remarks>
public abstract class MergeRoute
{
    private protected MergeRoute(IMergeBackend backend, ResultSink results, ParallelOptions parallel)
    {
        Backend = backend;
        Results = results;
        Parallel = parallel;
    }

    /// <summary>The backend the kernels run on.</summary>
    public IMergeBackend Backend { get; }

    /// <summary>The route for <paramref name="backend"/>, with results in fresh F32 arrays that the caller keeps.</summary>
    public static MergeRoute For(IMergeBackend backend) => For(backend, ResultSink.FreshArrays);

    /// <summary>The route for <paramref name="backend"/>, with results going to <paramref name="results"/>.</summary>
    internal static MergeRoute For(IMergeBackend backend, ResultSink results) =>
        backend.HostMemory is { } host ? new HostRoute(backend, host, results) : new DeviceRoute(backend, results);

    /// <summary>Where results go: F32 arrays, or the output's bytes.</summary>
    internal ResultSink Results { get; }

    /// <summary>
    /// Host threads for the element-wise passes: the CPU backend's thread count (so <c>--threads</c> holds
    /// everywhere), every core when the kernels run on a device.
    /// </summary>
    internal ParallelOptions Parallel { get; }

    /// <summary>
    /// Whether a method whose first step trims every factor (<see cref="ITrimsEveryFactorFirst"/>) should
    /// get them unread, so each is read by the thread that trims it; otherwise the feed reads them ahead.
    /// </summary>
    internal abstract bool ReadsWhereItTrims { get; }

    // ---- kernels: where the route matters ----

    /// <summary>
    /// CoPA's step 1 and the row sums of step 2 (SEMANTICS §2): every A_n and B_n trimmed to its top-ρ
    /// magnitudes on its own, with Σ_j|A_n[i,j]| and Σ_j|Ã_n[i,j]| per row; a factor holding NaN or Inf
    /// is named (the first such A, else the first such B). The caller's arrays are left as they are.
    /// </summary>
    internal abstract TrimmedFactors TrimWithRowSums(ModuleInput m, double density, TrimmedUse use);

    /// <summary>
    /// Trims every tensor to its top-ρ magnitudes, each on its own (family 1), replacing the entries of
    /// <paramref name="xs"/> by the trimmed tensors (the arrays themselves where they can be trimmed in
    /// place), and returns the selections; a NaN or Inf in tensor n throws <paramref name="nonFinite"/>(n).
    /// </summary>
    internal abstract SelectionResult[] TrimEach(List<float[]> xs, double density, Func<int, TaskInputException> nonFinite);

    /// <summary>ΔW_n = s_n·B_n·A_n as a dense d_out × d_in array (family 3, one term, bit-exact: the same bits on every backend).</summary>
    internal abstract float[] TaskDelta(ModuleInput m, int task);

    // ---- host steps: the same on both routes ----

    /// <summary>
    /// The exact rank-Σr pair of λ·Σ_n B̃_n·diag(c_n)·Ã_n from CoPA's trimmed factors (SEMANTICS §2 step 5),
    /// <paramref name="coefficient"/>(n, j) rounded once to fp32: in the output's bytes where the trims went
    /// there, else as F32.
    /// </summary>
    internal LowRankResult Concatenate(ModuleInput m, TrimmedFactors trimmed, Func<int, int, double> coefficient, ModuleStats stats) =>
        trimmed.Output is { } output
            ? output.Finish(coefficient, stats, Parallel)
            : Concatenation.Concatenate(m, trimmed.B, trimmed.A, coefficient, stats, Results, Parallel);

    /// <summary>The exact rank-Σr pair of Σ_n B_n·diag(c_n)·A_n from the module's factors (task arithmetic in delta space).</summary>
    internal LowRankResult Concatenate(ModuleInput m, Func<int, int, double> coefficient, ModuleStats stats)
    {
        m.Factors.RequireF32();
        return Concatenation.Concatenate(m, m.Tasks.Select(t => t.B).ToList(), m.Tasks.Select(t => t.A).ToList(), coefficient, stats, Results, Parallel);
    }

    /// <summary>
    /// copa-official's sums (SEMANTICS §3): A = λ·Σ_n Ã_n and B = λ·Σ_n B̃_n·diag(S̃_n), in task order, each
    /// product rounded before its add; into the output's bytes where the run writes this result as it is.
    /// </summary>
    internal LowRankResult SumThenScale(ModuleInput m, TrimmedFactors trimmed, double[][] s, double lambda, double scale, double alpha,
        ModuleStats stats)
    {
        int r = m.Tasks[0].Rank, dOut = m.DOut, dIn = m.DIn, n = m.Tasks.Count;
        var coefficients = s.Select(sn => sn.Select(x => (float)x).ToArray()).ToArray();
        EncodedFactors? encoded = null;
        float[] a = [], b = [];
        OrderedSums.SumSink aOut, bOut;
        if (Results.EncodeAs is { } outType)
        {
            int size = outType.Bits() / 8, aLength = r * dIn * size, bLength = dOut * r * size;
            encoded = new EncodedFactors(outType, ResultSink.Bytes(bLength), bLength, ResultSink.Bytes(aLength), aLength);
            (aOut, bOut) = (OrderedSums.SumSink.Encoded(outType, encoded.A, Formats.Peft.LoraAdapter.KeyA(m.Path), dIn),
                OrderedSums.SumSink.Encoded(outType, encoded.B, Formats.Peft.LoraAdapter.KeyB(m.Path), r));
        }
        else
        {
            a = Results.Floats(checked(r * dIn));
            b = Results.Floats(checked(dOut * r));
            (aOut, bOut) = (OrderedSums.SumSink.Floats(a), OrderedSums.SumSink.Floats(b));
        }
        if (trimmed.Bits16 is { } format)
            OrderedSums.SumFactorsThenScale(new OrderedSums.Raw16Rows(trimmed.A, format), new OrderedSums.Raw16Rows(trimmed.B, format),
                n, coefficients, dOut, r, dIn, (float)lambda, aOut, bOut, Parallel);
        else
            OrderedSums.SumFactorsThenScale(new OrderedSums.F32Rows(trimmed.A), new OrderedSums.F32Rows(trimmed.B),
                n, coefficients, dOut, r, dIn, (float)lambda, aOut, bOut, Parallel);
        return new LowRankResult(b, a, r, scale, alpha) { Stats = stats, Encoded = encoded };
    }

    /// <summary>The k-th smallest |x| (1-based), exactly: an order statistic of a host array.</summary>
    internal static float KthSmallestMagnitude(ReadOnlySpan<float> x, long k) => HostKernels.KthSmallestMagnitude(x, k);

    /// <summary>The k-th smallest x (1-based), exactly, with caller-owned scratch as long as <paramref name="x"/>.</summary>
    internal static float KthSmallest(ReadOnlySpan<float> x, long k, Span<float> scratch) => HostKernels.KthSmallest(x, k, scratch);
}

/// <summary>
/// A method whose first step trims every factor on its own (CoPA): on a route that reads where it trims,
/// its factors come unread, and each is read by the thread that trims it, while it stays in cache.
/// </summary>
internal interface ITrimsEveryFactorFirst { }
