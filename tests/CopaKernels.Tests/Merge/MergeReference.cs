using CopaKernels.Kernels;
using CopaKernels.Kernels.Reference;
using CopaKernels.Merge;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// Plain scalar re-implementations of the merge methods, written from SEMANTICS §2–§4 (dense, double
/// accumulation). Trims use the scalar selection reference; fp32 appears only where SEMANTICS puts it
/// (inputs, the scaled factors that are trimmed, the results).
/// </summary>
internal static class MergeReference
{
    public static float[] Trim(float[] x, double density)
    {
        var y = (float[])x.Clone();
        ReferenceMagnitudeSelection.Select(y, density);
        return y;
    }

    public static double[,] Dense(float[] b, float[] a, int dOut, int r, int dIn, double scale = 1)
    {
        var w = new double[dOut, dIn];
        for (int i = 0; i < dOut; i++)
            for (int j = 0; j < dIn; j++)
            {
                double s = 0;
                for (int k = 0; k < r; k++) s += (double)b[i * r + k] * a[k * dIn + j];
                w[i, j] = s * scale;
            }
        return w;
    }

    /// <summary>CoPA S per task (steps 2–4).</summary>
    public static double[][] CopaS(ModuleInput m, float[][] aTrim, double clamp, bool normalize)
    {
        int n = m.Tasks.Count;
        var s = new double[n][];
        for (int t = 0; t < n; t++)
        {
            int r = m.Tasks[t].Rank;
            s[t] = new double[r];
            for (int i = 0; i < r; i++)
            {
                double num = 0, den = 0;
                for (int j = 0; j < m.DIn; j++)
                {
                    num += Math.Abs(m.Tasks[t].A[i * m.DIn + j]);
                    den += Math.Abs(aTrim[t][i * m.DIn + j]);
                }
                s[t][i] = den == 0 ? 1 : num / den;
            }
            if (clamp > 0)
            {
                var sorted = s[t].OrderBy(x => x).ToArray();
                int idx = (int)Math.Floor(r * (1 - clamp));
                if (idx < r) for (int i = 0; i < r; i++) s[t][i] = Math.Max(s[t][i], sorted[idx]);
            }
        }
        if (normalize)
            for (int i = 0; i < m.Tasks[0].Rank; i++)
            {
                double total = 0;
                for (int t = 0; t < n; t++) total += s[t][i];
                for (int t = 0; t < n; t++) s[t][i] /= total;
            }
        return s;
    }

    /// <summary>SEMANTICS §2 step 5, dense.</summary>
    public static double[,] Copa(ModuleInput m, double density, double lambda, double clamp, bool normalize)
    {
        var aT = m.Tasks.Select(t => Trim(t.A, density)).ToArray();
        var bT = m.Tasks.Select(t => Trim(t.B, density)).ToArray();
        var s = CopaS(m, aT, clamp, normalize);
        var w = new double[m.DOut, m.DIn];
        for (int t = 0; t < m.Tasks.Count; t++)
        {
            int r = m.Tasks[t].Rank;
            for (int i = 0; i < m.DOut; i++)
                for (int j = 0; j < m.DIn; j++)
                {
                    double acc = 0;
                    for (int k = 0; k < r; k++) acc += (double)bT[t][i * r + k] * s[t][k] * aT[t][k * m.DIn + j];
                    w[i, j] += lambda * m.Tasks[t].Scale * acc;
                }
        }
        return w;
    }

    /// <summary>SEMANTICS §3: (B_m, A_m) in double.</summary>
    public static (double[] B, double[] A) CopaOfficial(ModuleInput m, double density, double lambda)
    {
        int r = m.Tasks[0].Rank;
        var aT = m.Tasks.Select(t => Trim(t.A, density)).ToArray();
        var bT = m.Tasks.Select(t => Trim(t.B, density)).ToArray();
        var s = CopaS(m, aT, 0.2, true);
        var a = new double[r * m.DIn];
        var b = new double[m.DOut * r];
        for (int t = 0; t < m.Tasks.Count; t++)
        {
            for (int i = 0; i < a.Length; i++) a[i] += lambda * aT[t][i];
            for (int i = 0; i < m.DOut; i++)
                for (int k = 0; k < r; k++) b[i * r + k] += lambda * bT[t][i * r + k] * s[t][k];
        }
        return (b, a);
    }

    /// <summary>One sparsifier + combine of SEMANTICS §4 over flattened task tensors (weights already applied or passed).</summary>
    public static double[] Baseline(string method, IReadOnlyList<float[]> xs, double[] w, double density, double lambda, ulong seed, string streamName)
    {
        int n = xs.Count;
        var x = xs.Select(v => (float[])v.Clone()).ToList();
        if (method is "ties" or "magnitude-prune") x = x.Select(v => Trim(v, density)).ToList();
        if (method is "dare" or "dare-ties")
        {
            uint keep = CounterRandom.KeepThreshold(density);
            for (int t = 0; t < n; t++)
            {
                ulong key = CounterRandom.StreamKey(seed, streamName, t);
                for (int i = 0; i < x[t].Length; i++)
                    x[t][i] = CounterRandom.Draw(key, i) < keep ? x[t][i] / (float)density : 0f;
            }
        }
        bool consensus = method is "ties" or "dare-ties";
        var result = new double[x[0].Length];
        for (int i = 0; i < result.Length; i++)
        {
            double total = 0;
            for (int t = 0; t < n; t++) total += w[t] * x[t][i];
            if (!consensus) { result[i] = lambda * total; continue; }
            int sign = total >= 0 ? 1 : -1;
            double sum = 0;
            int count = 0;
            for (int t = 0; t < n; t++)
            {
                double y = w[t] * x[t][i];
                if (Math.Sign(y) == sign) { sum += y; count++; }
            }
            result[i] = lambda * sum / Math.Max(1, count);
        }
        return result;
    }
}
