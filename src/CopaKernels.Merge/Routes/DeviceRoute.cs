using System.Runtime.InteropServices;
using CopaKernels.Kernels;

namespace CopaKernels.Merge.Routes;

/// <summary>
/// The route of a device backend (CUDA, OpenCL): a module's tensors are packed into one device buffer per
/// operation (<see cref="PackedTensors"/>), selected by one batched launch, and read back with one download,
/// instead of a synchronous round trip per tensor.
/// </summary>
internal sealed class DeviceRoute(IMergeBackend backend, ResultSink results)
    : MergeRoute(backend, results, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount })
{
    /// <remarks>The feed reads every factor ahead, on its worker thread, while the device works on the previous module.</remarks>
    internal override bool ReadsWhereItTrims => false;

    /// <remarks>
    /// Every factor packed into one buffer per side, one batched selection launch per side, and the fused
    /// row-sum kernel per task. B is trimmed in place; A only gets its threshold from the selection, because
    /// its row sums need the untrimmed values: the row-sum kernel then sums, masks and zeroes in one pass.
    /// </remarks>
    internal override TrimmedFactors TrimWithRowSums(ModuleInput m, double density, TrimmedUse use)
    {
        int n = m.Tasks.Count;
        m.Factors.RequireF32();
        using var a = new PackedTensors(Backend, m.Tasks.Select(t => t.A).ToList());
        using var b = new PackedTensors(Backend, m.Tasks.Select(t => t.B).ToList());
        var selA = new SelectionResult[n];
        var selB = new SelectionResult[n];
        try
        {
            Backend.SelectByMagnitudeBatched(a.Buffer, a.Ranges, density, selA, applyMask: false);
            Backend.SelectByMagnitudeBatched(b.Buffer, b.Ranges, density, selB, applyMask: true);
        }
        catch (NonFiniteInputException e)
        {
            throw MergeErrors.NonFinite(m, e.RangeIndex);
        }
        // Every task's sums in one buffer, read back with one download after all the kernels.
        long sumsLength = 2L * m.Tasks.Sum(t => (long)t.Rank);
        using var sums = Backend.Allocate(Math.Max(1, sumsLength) * sizeof(float));
        var all = new float[sumsLength];
        long at = 0;
        for (int task = 0; task < n; task++)
        {
            int r = m.Tasks[task].Rank;
            // Plain sums at [0, r), masked sums at [r, 2r) of the task's slot, Ã in place.
            Backend.RowAbsSums(new MatrixView(a.Buffer, a.Ranges[task].Offset, r, m.DIn), new BufferView(sums, at),
                new RowThreshold(selA[task].Threshold, new BufferView(sums, at + r), ZeroBelow: true));
            at += 2L * r;
        }
        Backend.Download(sums, 0, MemoryMarshal.AsBytes(all.AsSpan()));
        var rowSums = new float[n][];
        at = 0;
        for (int task = 0; task < n; task++)
        {
            int r = m.Tasks[task].Rank;
            rowSums[task] = all.AsSpan(checked((int)at), 2 * r).ToArray();
            at += 2L * r;
        }
        return new TrimmedFactors(a.ReadBack(), b.ReadBack(), selA, selB, rowSums);
    }

    /// <remarks>The tensors packed into one batched launch and read back.</remarks>
    internal override SelectionResult[] TrimEach(List<float[]> xs, double density, Func<int, TaskInputException> nonFinite)
    {
        var sel = new SelectionResult[xs.Count];
        using var packed = new PackedTensors(Backend, xs);
        try { Backend.SelectByMagnitudeBatched(packed.Buffer, packed.Ranges, density, sel); }
        catch (NonFiniteInputException e)
        {
            throw nonFinite(e.RangeIndex);
        }
        var trimmed = packed.ReadBack();
        for (int i = 0; i < xs.Count; i++) xs[i] = trimmed[i];
        return sel;
    }

    /// <remarks>
    /// Bit-exact: the delta-space methods trim this ΔW by magnitude, and the masks must be the same on
    /// every backend, which an fp32 product (fused or not, in any order) does not guarantee.
    /// </remarks>
    internal override float[] TaskDelta(ModuleInput m, int task)
    {
        m.Factors.RequireF32();
        var t = m.Tasks[task];
        using var b = Backend.Allocate(Math.Max(1, t.B.LongLength) * 4);
        using var a = Backend.Allocate(Math.Max(1, t.A.LongLength) * 4);
        using var o = Backend.Allocate(Math.Max(1, (long)m.DOut * m.DIn) * 4);
        Backend.Upload(MemoryMarshal.AsBytes(t.B.AsSpan()), b, 0);
        Backend.Upload(MemoryMarshal.AsBytes(t.A.AsSpan()), a, 0);
        LowRankTerm[] terms = [new LowRankTerm(b, 0, a, 0, t.Rank, (float)t.Scale)];
        Backend.LowRankProduct(terms, m.DOut, m.DIn, new ProductTile(0, m.DOut, o, BitExact: true));
        var result = GC.AllocateUninitializedArray<float>(checked(m.DOut * m.DIn));
        Backend.Download(o, 0, MemoryMarshal.AsBytes(result.AsSpan()));
        return result;
    }
}
