using CopaKernels.Merge.Routes;

namespace CopaKernels.Merge;

/// <summary>
/// Steps 2–4 of CoPA (SEMANTICS §2), shared by the paper's method and the released variant: from the
/// trimmed factors' row sums, the complementary scale S_n[i] = Σ_j|A_n[i,j]| / Σ_j|Ã_n[i,j]|, the optional
/// clamp and the cross-task normalisation.
/// </summary>
internal static class CopaScaling
{
    /// <summary>S̃_n per task (after the clamp and the normalisation); thresholds, kept counts and fallback rows go into <paramref name="stats"/>.</summary>
    /// <param name="m">The module.</param>
    /// <param name="trimmed">Step 1 and the row sums (<see cref="MergeRoute.TrimWithRowSums"/>).</param>
    /// <param name="clamp">c of step 3 (0: off).</param>
    /// <param name="normalize">Step 4 on or off (the ranks must then be equal, checked before the trims).</param>
    /// <param name="stats">The module's statistics.</param>
    public static double[][] Scales(ModuleInput m, TrimmedFactors trimmed, double clamp, bool normalize, ModuleStats stats)
    {
        int n = m.Tasks.Count;
        var s = new double[n][];
        for (int task = 0; task < n; task++)
        {
            int r = m.Tasks[task].Rank;
            var sums = trimmed.RowSums[task];
            s[task] = new double[r];
            int fallback = 0;
            for (int i = 0; i < r; i++)
            {
                double num = sums[i], den = sums[r + i];
                if (den == 0)
                {
                    s[task][i] = 1;
                    fallback++;
                }
                else s[task][i] = num / den;
            }
            stats.ZeroDenominatorRows += fallback;
            stats.ThresholdsA.Add(trimmed.SelA[task].Threshold);
            stats.ThresholdsB.Add(trimmed.SelB[task].Threshold);
            stats.Kept += trimmed.SelA[task].Kept + trimmed.SelB[task].Kept;
            stats.Total += m.Tasks[task].A.Length + m.Tasks[task].B.Length;
            stats.KeptFractionA.Add(ModuleStats.Fraction(trimmed.SelA[task].Kept, m.Tasks[task].A.Length));
            stats.KeptFractionB.Add(ModuleStats.Fraction(trimmed.SelB[task].Kept, m.Tasks[task].B.Length));
            // Step 3: raise everything below the floor(r·(1−c))-th smallest (0-based) to it.
            if (clamp > 0) Clamp(s[task], clamp);
            stats.Scales.Add(ScaleSummary.Of(s[task], fallback));
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
        return s;
    }

    /// <summary>
    /// An ascending copy of a rank's worth of values, by insertion sort: r is a LoRA rank (tens of values),
    /// and Array.Sort over doubles compiles its generic sorter at the first module of a process that runs once.
    /// </summary>
    internal static double[] SortedCopy(ReadOnlySpan<double> values)
    {
        var sorted = values.ToArray();
        for (int i = 1; i < sorted.Length; i++)
        {
            double v = sorted[i];
            int j = i - 1;
            for (; j >= 0 && sorted[j] > v; j--) sorted[j + 1] = sorted[j];
            sorted[j + 1] = v;
        }
        return sorted;
    }

    /// <summary>The released code's clamp: S_n raised to its floor(r·(1−c))-th smallest value (0-based).</summary>
    internal static void Clamp(double[] s, double c)
    {
        int r = s.Length;
        int idx = (int)Math.Floor(r * (1 - c));
        if (idx >= r) return;
        double floor = SortedCopy(s)[idx];
        for (int i = 0; i < r; i++) if (s[i] < floor) s[i] = floor;
    }
}
