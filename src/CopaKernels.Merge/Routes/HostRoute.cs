using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Formats;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels;
using CopaKernels.Merge.Factors;
using static CopaKernels.Merge.Routes.HostLoops;

namespace CopaKernels.Merge.Routes;

/// <summary>
/// The route of a backend whose buffers are host memory: the kernels run on the factor arrays where they
/// lie (<see cref="HostKernels"/>, or the backend's own kernels on a wrapped array), with no copy in or out.
/// </summary>
/// <remarks>
/// The copies a device route makes move as many bytes as the kernels read, so this route avoids every
/// one it can: a merge's own arrays are trimmed in place; a factor still in its file is read by the
/// thread that trims it, right before, so the trim's passes find it in cache; a BF16/F16 factor is selected
/// on its stored bits (2 bytes a value; the threshold and mask are the F32 ones bit for bit) and, where the
/// next step reads 16-bit values, kept that way (<see cref="FactorHome.Bits16"/>) or copied straight into
/// the output's bytes (<see cref="EncodedConcatenation"/>).
/// </remarks>
internal sealed class HostRoute(IMergeBackend backend, IHostMemory host, ResultSink results)
    : MergeRoute(backend, results, new ParallelOptions { MaxDegreeOfParallelism = host.Threads })
{
    /// <summary>Tensors this long are selected with every thread on their own (dense task deltas); shorter ones one per thread.</summary>
    private const int LargeTensor = 1 << 20;

    internal override bool ReadsWhereItTrims => true;

    internal override TrimmedFactors TrimWithRowSums(ModuleInput m, double density, TrimmedUse use)
    {
        int n = m.Tasks.Count;
        var factors = m.Factors;
        // The factors' stored 16-bit format, when every one is still in its file in it: the trims can then
        // run on the stored bits, and the next step may read them as they are.
        KeepTrimmed16? keep = null;
        EncodedConcatenation? output = null;
        DType? bits16 = null;
        if (factors.CommonStoredFormat is { } format)
        {
            if (use == TrimmedUse.Concatenation && Results.EncodeAs == format)
            {
                // Adapter output in the factors' own format: the pair is built in the output's bytes.
                output = new EncodedConcatenation(m, format);
                keep = output.Sink;
            }
            else if (use == TrimmedUse.OrderedSums)
            {
                // Each trimmed factor kept in its stored format in the first half of its own (unread) F32
                // array; the sums widen it block by block.
                bits16 = format;
                keep = (task, isB, values, threshold) =>
                {
                    var t = m.Tasks[task];
                    var array = isB ? t.B : t.A;
                    HostKernels.MaskByMagnitude(values, FactorSet.Bits16Of(array, values.Length), format, threshold);
                };
            }
        }
        // The merge's own arrays are trimmed where they lie; a caller's are copied first.
        var aTrim = m.Tasks.Select(t => factors.Owned ? t.A : (float[])t.A.Clone()).ToArray();
        var bTrim = m.Tasks.Select(t => factors.Owned ? t.B : (float[])t.B.Clone()).ToArray();
        var selA = new SelectionResult[n];
        var selB = new SelectionResult[n];
        var rowSums = new float[n][];
        var bad = new bool[2 * n];
        // One factor per work item (A's and B's interleaved), so two threads stay busy for any n.
        ParallelFor(2 * n, Parallel, item =>
        {
            int task = item >> 1;
            bool isB = (item & 1) == 1;
            int r = m.Tasks[task].Rank;
            try
            {
                if (keep is not null)
                {
                    // Read into this thread's scratch, selected there, handed on while in cache: the keeper's
                    // trimmed copy is the only write. (Not a mapping of the file: its page faults cost more than
                    // the copy; see bench/RESULTS.md.)
                    var format = factors.StoredFormat(task, isB)!.Value;
                    var bits = RawScratch(isB ? bTrim[task].Length : aTrim[task].Length);
                    factors.ReadStored(task, isB, bits);
                    var sel = HostKernels.ThresholdByMagnitude(bits, format, density);
                    if (isB) selB[task] = sel;
                    else
                    {
                        selA[task] = sel;
                        rowSums[task] = RowSums16(bits, format, r, m.DIn, sel.Threshold);
                    }
                    keep(task, isB, bits, sel.Threshold);
                    factors.KeptAsBits16(task, isB);
                    return;
                }
                var selection = SelectWhileReading(factors, task, isB, isB ? bTrim[task] : aTrim[task], density);
                if (isB)
                {
                    selB[task] = selection ?? HostKernels.SelectByMagnitude(bTrim[task], density, applyMask: true);
                    return;
                }
                selA[task] = selection ?? HostKernels.SelectByMagnitude(aTrim[task], density, applyMask: false);
                var sums = new float[2 * r];
                HostKernels.RowAbsSums(aTrim[task], r, m.DIn, sums.AsSpan(0, r), selA[task].Threshold, sums.AsSpan(r), applyMask: true);
                rowSums[task] = sums;
            }
            catch (NonFiniteInputException)
            {
                bad[item] = true;
            }
        });
        // The same task is named as on a device: the first A that holds NaN/Inf, else the first B.
        for (int side = 0; side < 2; side++)
            for (int task = 0; task < n; task++)
                if (bad[2 * task + side]) throw MergeErrors.NonFinite(m, task);
        return new TrimmedFactors(aTrim, bTrim, selA, selB, rowSums) { Bits16 = bits16, Output = output };
    }

    /// <summary>
    /// Reads a factor still in its file into <paramref name="into"/>. A BF16/F16 factor is selected on its
    /// stored bits before it is widened (the trim's passes read 2 bytes a value, not 4; the threshold and
    /// mask are the F32 ones bit for bit), B masked there, A left whole for its row sums; the selection is
    /// returned. Otherwise the factor is read as F32 (if it is in its file) and null says the caller selects.
    /// </summary>
    private static SelectionResult? SelectWhileReading(FactorSet factors, int task, bool isB, float[] into, double density)
    {
        if (factors.StoredFormat(task, isB) is not { } format)
        {
            factors.ReadF32(task, isB);
            return null;
        }
        var bits = RawScratch(into.Length);
        factors.ReadStored(task, isB, bits);
        var selection = HostKernels.SelectByMagnitude(bits, format, density, applyMask: isB);
        ElementCodec.Widen(bits, format, into);
        factors.Widened(task, isB);
        return selection;
    }

    /// <summary>This thread's 16-bit scratch, at least <paramref name="length"/> long (as long as the longest factor so far).</summary>
    private static Span<ushort> RawScratch(int length) => ThreadScratch.Get(ref t_raw, length);

    [ThreadStatic] private static ushort[]? t_raw;
    [ThreadStatic] private static float[]? t_row;

    /// <summary>
    /// Plain and trimmed |x| sums of each row of a 16-bit A, at [0, r) and [r, 2r): each row widened into
    /// a per-thread scratch and summed by the F32 kernel, so the sums are the F32 route's bit for bit.
    /// </summary>
    private static float[] RowSums16(ReadOnlySpan<ushort> bits, DType format, int rows, int cols, float threshold)
    {
        var row = ThreadScratch.Get(ref t_row, cols);
        var sums = new float[2 * rows];
        for (int i = 0; i < rows; i++)
        {
            ElementCodec.Widen(bits.Slice(i * cols, cols), format, row);
            HostKernels.RowAbsSums(row, 1, cols, sums.AsSpan(i, 1), threshold, sums.AsSpan(rows + i, 1), applyMask: false);
        }
        return sums;
    }

    /// <remarks>Large tensors are selected with every thread each, the others one per thread, all where they lie.</remarks>
    internal override SelectionResult[] TrimEach(List<float[]> xs, double density, Func<int, TaskInputException> nonFinite)
    {
        var sel = new SelectionResult[xs.Count];
        var bad = new bool[xs.Count];
        var small = Enumerable.Range(0, xs.Count).Where(i => xs[i].Length < LargeTensor).ToArray();
        ParallelFor(small.Length, Parallel, j =>
        {
            try { sel[small[j]] = HostKernels.SelectByMagnitude(xs[small[j]], density); }
            catch (NonFiniteInputException) { bad[small[j]] = true; }
        });
        for (int i = 0; i < xs.Count; i++)
        {
            if (xs[i].Length < LargeTensor) continue;
            using var buffer = host.Wrap(xs[i]);
            try { sel[i] = Backend.SelectByMagnitude(buffer, new TensorRange(0, xs[i].Length), density); }
            catch (NonFiniteInputException) { bad[i] = true; }
        }
        int first = Array.IndexOf(bad, true);
        if (first >= 0) throw nonFinite(first);
        return sel;
    }

    /// <remarks>The product reads the factors and writes the result array in place.</remarks>
    internal override float[] TaskDelta(ModuleInput m, int task)
    {
        m.Factors.RequireF32();
        var t = m.Tasks[task];
        var delta = GC.AllocateUninitializedArray<float>(checked(m.DOut * m.DIn));
        using var hb = host.Wrap(t.B);
        using var ha = host.Wrap(t.A);
        using var ho = host.Wrap(delta);
        LowRankTerm[] terms = [new LowRankTerm(hb, 0, ha, 0, t.Rank, (float)t.Scale)];
        Backend.LowRankProduct(terms, m.DOut, m.DIn, new ProductTile(0, m.DOut, ho, BitExact: true));
        return delta;
    }
}
