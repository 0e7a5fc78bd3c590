using System.Numerics.Tensors;

namespace CopaKernels.Merge;

/// <summary>
/// Factor space (SEMANTICS §4): the baselines run on the A stack and the B stack separately, each task's
/// weight and LoRA scale folded into its factors, which needs one rank across adapters.
/// </summary>
internal static class FactorSpace
{
    /// <summary>Why factor-space merges need one rank.</summary>
    public const string FactorSpaceRanks = "factor space needs equal ranks (use space delta)";

    /// <summary>The common rank r; throws naming the module when the adapters' ranks differ.</summary>
    public static int RequireEqualRanks(ModuleInput m, string why) =>
        ResultForm.EqualRanks(m.Path, m.Tasks.Select(t => (t.Rank, t.Alpha)).ToList(), why);

    /// <summary>
    /// Factor space (SEMANTICS §4): x^A_n = sign(w_n)·√|w_n·s_n|·A_n and x^B_n = √|w_n·s_n|·B_n, as fresh
    /// arrays (the coefficient computed in double, rounded once, one fp32 multiply per element).
    /// </summary>
    public static (List<float[]> A, List<float[]> B, int Rank) WeightedFactors(ModuleInput m, MergeOptions o)
    {
        int r = RequireEqualRanks(m, FactorSpaceRanks);
        m.Factors.RequireF32();
        var xa = new List<float[]>(m.Tasks.Count);
        var xb = new List<float[]>(m.Tasks.Count);
        for (int task = 0; task < m.Tasks.Count; task++)
        {
            float cb = (float)Math.Sqrt(Math.Abs(o.WeightOf(m, task) * m.Tasks[task].Scale));
            float ca = Math.Sign(o.WeightOf(m, task)) * cb;
            xa.Add(Scaled(m.Tasks[task].A, ca));
            xb.Add(Scaled(m.Tasks[task].B, cb));
        }
        return (xa, xb, r);
    }

    /// <summary>c·x as a new array.</summary>
    public static float[] Scaled(float[] x, float c)
    {
        var y = GC.AllocateUninitializedArray<float>(x.Length);
        TensorPrimitives.Multiply(x, c, y);
        return y;
    }
}
