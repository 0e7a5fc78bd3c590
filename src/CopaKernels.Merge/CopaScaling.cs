using System.Runtime.InteropServices;
using CopaKernels.Formats;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Merge;

/// <summary>
/// Steps 1–4 of CoPA (SPEC §2), shared by the paper's method and the released variant: trim A and B
/// per task, the complementary scale S_n[i] = Σ_j|A_n[i,j]| / Σ_j|Ã_n[i,j]|, the optional clamp and
/// the cross-task normalisation.
/// </summary>
/// <remarks>
/// Two routes to the same numbers. A device backend gets every factor packed into one buffer, one
/// batched selection launch per side and the fused row-sum kernel per task. The SIMD CPU backend
/// works on the host arrays themselves (<see cref="HostKernels"/>), one factor per thread, with no
/// copy in or out: on a 2-core machine the copies cost as much as the kernels. Both use the same
/// exact selection and the same row-sum order, so thresholds, masks and S are identical.
/// </remarks>
internal static class CopaScaling
{
    /// <param name="ATrimmed">Ã_n per task (not filled when the trimmed factors went to a raw sink).</param>
    /// <param name="BTrimmed">B̃_n per task (likewise).</param>
    /// <param name="S">S̃_n per task (after the clamp and the normalisation).</param>
    /// <param name="Raw">Set when the trimmed factors went to the raw sink in this 16-bit format instead.</param>
    public sealed record Result(float[][] ATrimmed, float[][] BTrimmed, double[][] S, Float16Format? Raw = null);

    /// <summary>
    /// Takes a factor in its stored 16-bit format, on the worker thread that selected it, while it is in
    /// cache: its values untrimmed and the threshold t of its trim;
    /// the sink keeps |x| ≥ t as it copies them (<see cref="HostKernels.MaskByMagnitude(ReadOnlySpan{ushort}, Span{ushort}, Float16Format, float)"/>).
    /// Called once per factor, from several threads at once.
    /// </summary>
    public delegate void RawSink(int task, bool isB, ReadOnlySpan<ushort> values, float threshold);

    /// <summary>The CPU route reads deferred factors itself, each on the thread that trims it.</summary>
    public static bool ReadsDeferred(IMergeBackend backend) => backend is CpuBackend;

    /// <summary>Steps 1–4 for one module: trimmed factors and S̃, statistics into <paramref name="stats"/>.</summary>
    /// <param name="backend">Where the trims run.</param>
    /// <param name="m">The module's factors.</param>
    /// <param name="density">ρ, the fraction kept.</param>
    /// <param name="clamp">c of step 3 (0: off).</param>
    /// <param name="normalize">Step 4 on or off.</param>
    /// <param name="stats">Thresholds, kept counts and fallback rows go here.</param>
    /// <param name="raw">
    /// On the CPU route, for a module whose factors are all stored in <see cref="RawFormatOf"/>'s format:
    /// that format, and where the trimmed factors go in it instead of into F32 arrays (<see cref="Result.Raw"/>).
    /// </param>
    public static Result Compute(IMergeBackend backend, ModuleInput m, double density, double clamp, bool normalize, ModuleStats stats,
        (Float16Format Format, RawSink Sink)? raw = null)
    {
        if (normalize) ModuleOps.RequireEqualRanks(m, "CoPA's cross-task normalisation needs equal ranks (or normalize: false)");
        var trimmed = backend is CpuBackend cpu ? TrimOnHost(cpu, m, density, raw) : TrimOnDevice(backend, m, density);
        int n = m.Tasks.Count;
        var s = new double[n][];
        for (int task = 0; task < n; task++)
        {
            int r = m.Tasks[task].Rank;
            var sums = trimmed.RowSums[task];
            s[task] = new double[r];
            for (int i = 0; i < r; i++)
            {
                double num = sums[i], den = sums[r + i];
                if (den == 0)
                {
                    s[task][i] = 1;
                    stats.ZeroDenominatorRows++;
                }
                else s[task][i] = num / den;
            }
            stats.ThresholdsA.Add(trimmed.SelA[task].Threshold);
            stats.ThresholdsB.Add(trimmed.SelB[task].Threshold);
            stats.Kept += trimmed.SelA[task].Kept + trimmed.SelB[task].Kept;
            stats.Total += m.Tasks[task].A.Length + m.Tasks[task].B.Length;
            // Step 3: raise everything below the floor(r·(1−c))-th smallest (0-based) to it.
            if (clamp > 0) Clamp(s[task], clamp);
        }
        // Step 4: S̃_n[i] = S_n[i] / Σ_m S_m[i].
        if (normalize)
        {
            int r = m.Tasks[0].Rank;
            for (int i = 0; i < r; i++)
            {
                double total = 0;
                for (int task = 0; task < n; task++) total += s[task][i];
                for (int task = 0; task < n; task++) s[task][i] /= total;
            }
        }
        return new Result(trimmed.A, trimmed.B, s, trimmed.Raw);
    }

    /// <summary>
    /// The one 16-bit format every factor of a module is stored in when the module is read deferred
    /// (the streaming feed on the CPU route), else null: then the trims can run on the stored values.
    /// </summary>
    public static Float16Format? RawFormatOf(ModuleInput m)
    {
        if (m.Deferred is not { } d) return null;
        Float16Format? common = null;
        for (int factor = 0; factor < 2 * m.Tasks.Count; factor++)
        {
            if (d.RawFormat(factor >> 1, (factor & 1) == 1) is not { } f || (common is { } c && c != f)) return null;
            common = f;
        }
        return common;
    }

    /// <summary>Step 1 and the sums of step 2, per task: trimmed factors, selections, and row sums (plain at [0, r), trimmed at [r, 2r)).</summary>
    private sealed record Trimmed(float[][] A, float[][] B, SelectionResult[] SelA, SelectionResult[] SelB, float[][] RowSums,
        Float16Format? Raw = null);

    private static Trimmed TrimOnDevice(IMergeBackend backend, ModuleInput m, double density)
    {
        int n = m.Tasks.Count;
        // B is trimmed in place; A only gets its threshold here, because its row sums need the
        // untrimmed values: the fused row-sum kernel then sums, masks and zeroes in one pass.
        m.Deferred?.ReadAll();
        using var a = new PackedTensors(backend, m.Tasks.Select(t => t.A).ToList());
        using var b = new PackedTensors(backend, m.Tasks.Select(t => t.B).ToList());
        var selA = new SelectionResult[n];
        var selB = new SelectionResult[n];
        try
        {
            backend.SelectByMagnitudeBatched(a.Buffer, a.Ranges, density, selA, applyMask: false);
            backend.SelectByMagnitudeBatched(b.Buffer, b.Ranges, density, selB, applyMask: true);
        }
        catch (NonFiniteInputException e)
        {
            throw ModuleOps.NonFinite(m.Path, e.RangeIndex);
        }
        // Every task's sums in one buffer, read back with one download after all the kernels.
        long sumsLength = 2L * m.Tasks.Sum(t => (long)t.Rank);
        using var sums = backend.Allocate(Math.Max(1, sumsLength) * sizeof(float));
        var all = new float[sumsLength];
        long at = 0;
        for (int task = 0; task < n; task++)
        {
            int r = m.Tasks[task].Rank;
            // Plain sums at [0, r), masked sums at [r, 2r) of the task's slot, Ã in place.
            backend.RowAbsSums(a.Buffer, a.Ranges[task].Offset, r, m.DIn, sums, at, selA[task].Threshold, sums, at + r, applyMask: true);
            at += 2L * r;
        }
        backend.Download(sums, 0, MemoryMarshal.AsBytes(all.AsSpan()));
        var rowSums = new float[n][];
        at = 0;
        for (int task = 0; task < n; task++)
        {
            int r = m.Tasks[task].Rank;
            rowSums[task] = all.AsSpan(checked((int)at), 2 * r).ToArray();
            at += 2L * r;
        }
        return new Trimmed(a.ReadBack(), b.ReadBack(), selA, selB, rowSums);
    }

    private static Trimmed TrimOnHost(CpuBackend cpu, ModuleInput m, double density, (Float16Format Format, RawSink Sink)? raw)
    {
        int n = m.Tasks.Count;
        // The streaming feed's arrays are trimmed where they lie; a caller's are copied first.
        var aTrim = m.Tasks.Select(t => m.Transient ? t.A : (float[])t.A.Clone()).ToArray();
        var bTrim = m.Tasks.Select(t => m.Transient ? t.B : (float[])t.B.Clone()).ToArray();
        var selA = new SelectionResult[n];
        var selB = new SelectionResult[n];
        var rowSums = new float[n][];
        var bad = new bool[2 * n];
        // One factor per work item (A's and B's interleaved), so two threads stay busy for any n; a
        // deferred factor is read by the thread that trims it, just before, so it is still in cache.
        ModuleOps.ParallelFor(2 * n, ModuleOps.HostParallel(cpu), item =>
        {
            int task = item >> 1;
            bool isB = (item & 1) == 1;
            int r = m.Tasks[task].Rank;
            try
            {
                if (raw is var (format, sink))
                {
                    // Read into this thread's scratch, selected there, handed on while in cache: the sink's
                    // trimmed copy is the only write. (Mapping the file instead of reading it measured slower:
                    // the page faults cost more than the copy.)
                    var bits = RawScratch(isB ? bTrim[task].Length : aTrim[task].Length);
                    m.Deferred!.ReadRaw(task, isB, bits);
                    var sel = HostKernels.ThresholdByMagnitude(bits, format, density);
                    if (isB) selB[task] = sel;
                    else
                    {
                        selA[task] = sel;
                        rowSums[task] = RawRowSums(bits, format, r, m.DIn, sel.Threshold);
                    }
                    sink(task, isB, bits, sel.Threshold);
                    return;
                }
                var selection = SelectDeferred(m.Deferred, task, isB, isB ? bTrim[task] : aTrim[task], density);
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
                if (bad[2 * task + side]) throw ModuleOps.NonFinite(m.Path, task);
        return new Trimmed(aTrim, bTrim, selA, selB, rowSums, raw?.Format);
    }

    /// <summary>This thread's 16-bit scratch, at least <paramref name="length"/> long (as long as the longest factor so far).</summary>
    private static Span<ushort> RawScratch(int length) => ThreadScratch.Get(ref t_raw, length);

    [ThreadStatic] private static ushort[]? t_raw;
    [ThreadStatic] private static float[]? t_row;

    /// <summary>
    /// Plain and trimmed |x| sums of each row of a 16-bit A, at [0, r) and [r, 2r): each row widened into
    /// a per-thread scratch and summed by the F32 kernel, so the sums are the F32 route's bit for bit.
    /// </summary>
    private static float[] RawRowSums(ReadOnlySpan<ushort> bits, Float16Format format, int rows, int cols, float threshold)
    {
        var row = ThreadScratch.Get(ref t_row, cols);
        var sums = new float[2 * rows];
        for (int i = 0; i < rows; i++)
        {
            Float16Formats.Widen(bits.Slice(i * cols, cols), format, row);
            HostKernels.RowAbsSums(row, 1, cols, sums.AsSpan(i, 1), threshold, sums.AsSpan(rows + i, 1), applyMask: false);
        }
        return sums;
    }

    /// <summary>
    /// Reads a deferred factor into <paramref name="into"/>. A BF16/F16 factor is selected on its stored
    /// bits before it is widened (the trim's passes read 2 bytes a value, not 4; the threshold and mask
    /// are the F32 ones bit for bit), B masked there, A left whole for its row sums; the selection is
    /// returned. Otherwise the factor is read as F32 and null says the caller selects.
    /// </summary>
    private static SelectionResult? SelectDeferred(DeferredFactors? deferred, int task, bool isB, float[] into, double density)
    {
        if (deferred?.RawFormat(task, isB) is not { } format)
        {
            deferred?.Read(task, isB);
            return null;
        }
        var bits = RawScratch(into.Length);
        deferred.ReadRaw(task, isB, bits);
        var selection = HostKernels.SelectByMagnitude(bits, format, density, applyMask: isB);
        Float16Formats.Widen(bits, format, into);
        return selection;
    }

    /// <summary>The released code's clamp: S_n raised to its floor(r·(1−c))-th smallest value (0-based).</summary>
    internal static void Clamp(double[] s, double c)
    {
        int r = s.Length;
        int idx = (int)Math.Floor(r * (1 - c));
        if (idx >= r) return;
        // An insertion sort: r is a LoRA rank (tens of values), and Array.Sort over doubles compiled its
        // generic sorter at the first module.
        var sorted = (double[])s.Clone();
        for (int i = 1; i < r; i++)
        {
            double v = sorted[i];
            int j = i - 1;
            for (; j >= 0 && sorted[j] > v; j--) sorted[j + 1] = sorted[j];
            sorted[j + 1] = v;
        }
        double floor = sorted[idx];
        for (int i = 0; i < r; i++) if (s[i] < floor) s[i] = floor;
    }
}
