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
    public sealed record Result(float[][] ATrimmed, float[][] BTrimmed, double[][] S);

    /// <summary>The CPU route reads deferred factors itself, each on the thread that trims it.</summary>
    public static bool ReadsDeferred(IMergeBackend backend) => backend is CpuBackend;

    public static Result Compute(IMergeBackend backend, ModuleInput m, double density, double clamp, bool normalize, ModuleStats stats)
    {
        if (normalize) ModuleOps.RequireEqualRanks(m, "CoPA's cross-task normalisation needs equal ranks (or normalize: false)");
        var trimmed = backend is CpuBackend cpu ? TrimOnHost(cpu, m, density) : TrimOnDevice(backend, m, density);
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
        return new Result(trimmed.A, trimmed.B, s);
    }

    /// <summary>Step 1 and the sums of step 2, per task: trimmed factors, selections, and row sums (plain at [0, r), trimmed at [r, 2r)).</summary>
    private sealed record Trimmed(float[][] A, float[][] B, SelectionResult[] SelA, SelectionResult[] SelB, float[][] RowSums);

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

    private static Trimmed TrimOnHost(CpuBackend cpu, ModuleInput m, double density)
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
            m.Deferred?.Read(task, (item & 1) == 1);
            try
            {
                if ((item & 1) == 1)
                {
                    selB[task] = HostKernels.SelectByMagnitude(bTrim[task], density, applyMask: true);
                    return;
                }
                int r = m.Tasks[task].Rank;
                selA[task] = HostKernels.SelectByMagnitude(aTrim[task], density, applyMask: false);
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
        return new Trimmed(aTrim, bTrim, selA, selB, rowSums);
    }

    /// <summary>The released code's clamp: S_n raised to its floor(r·(1−c))-th smallest value (0-based).</summary>
    internal static void Clamp(double[] s, double c)
    {
        int r = s.Length;
        int idx = (int)Math.Floor(r * (1 - c));
        if (idx >= r) return;
        var sorted = (double[])s.Clone();
        Array.Sort(sorted);
        double floor = sorted[idx];
        for (int i = 0; i < r; i++) if (s[i] < floor) s[i] = floor;
    }
}
