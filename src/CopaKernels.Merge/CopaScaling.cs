using CopaKernels.Formats;
using CopaKernels.Kernels;

namespace CopaKernels.Merge;

/// <summary>
/// Steps 1–4 of CoPA (SPEC §2), shared by the paper's method and the released variant: trim A and B
/// per task, the complementary scale S_n[i] = Σ_j|A_n[i,j]| / Σ_j|Ã_n[i,j]|, the optional clamp and
/// the cross-task normalisation.
/// </summary>
internal static class CopaScaling
{
    public sealed record Result(float[][] ATrimmed, float[][] BTrimmed, double[][] S);

    public static Result Compute(IMergeBackend backend, ModuleInput m, double density, double clamp, bool normalize, ModuleStats stats)
    {
        int n = m.Tasks.Count;
        if (normalize) ModuleOps.RequireEqualRanks(m, "CoPA's cross-task normalisation needs equal ranks (or normalize: false)");

        // Step 1: B is trimmed in place; A only gets its threshold here, because its row sums need
        // the untrimmed values: the fused row-sum kernel then sums, masks and zeroes in one pass.
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

        int maxRank = m.Tasks.Max(t => t.Rank);
        using var sums = backend.Allocate(Math.Max(1, maxRank) * 2L * sizeof(float));
        var s = new double[n][];
        for (int task = 0; task < n; task++)
        {
            int r = m.Tasks[task].Rank;
            // Step 2, fused: plain sums at [0, r), masked sums at [r, 2r), Ã in place.
            backend.RowAbsSums(a.Buffer, a.Ranges[task].Offset, r, m.DIn, sums, 0, selA[task].Threshold, sums, r, applyMask: true);
            var both = new float[2 * r];
            backend.Download(sums, 0, System.Runtime.InteropServices.MemoryMarshal.AsBytes(both.AsSpan()));
            s[task] = new double[r];
            for (int i = 0; i < r; i++)
            {
                double num = both[i], den = both[r + i];
                if (den == 0)
                {
                    s[task][i] = 1;
                    stats.ZeroDenominatorRows++;
                }
                else s[task][i] = num / den;
            }
            stats.ThresholdsA.Add(selA[task].Threshold);
            stats.ThresholdsB.Add(selB[task].Threshold);
            stats.Kept += selA[task].Kept + selB[task].Kept;
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
        var aTrim = new float[n][];
        var bTrim = new float[n][];
        for (int task = 0; task < n; task++)
        {
            aTrim[task] = a.Download(task);
            bTrim[task] = b.Download(task);
        }
        return new Result(aTrim, bTrim, s);
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
