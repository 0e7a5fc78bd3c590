using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Runtime.InteropServices;
using CopaKernels.Formats;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Merge;

/// <summary>The steps several methods share: factor-space weighting, dense task deltas, rank-Σr concatenation.</summary>
internal static class ModuleOps
{
    /// <summary>The one message for a non-finite input value (task is 0-based).</summary>
    public static CopaInputException NonFinite(string path, int task) =>
        new(null, path, $"adapter {task + 1} holds NaN or Inf in this module");

    /// <summary>Why factor-space merges need one rank.</summary>
    public const string FactorSpaceRanks = "factor space needs equal ranks (use space delta)";

    /// <summary>The common rank r; throws naming the module when the adapters' ranks differ.</summary>
    public static int RequireEqualRanks(ModuleInput m, string why)
    {
        int r = m.Tasks[0].Rank;
        foreach (var t in m.Tasks)
            if (t.Rank != r)
                throw new CopaInputException(null, m.Path,
                    $"ranks differ between adapters ({string.Join(", ", m.Tasks.Select(x => x.Rank))}); {why}");
        return r;
    }

    /// <summary>
    /// Factor space (SPEC §4): x^A_n = sign(w_n)·√|w_n·s_n|·A_n and x^B_n = √|w_n·s_n|·B_n, as fresh
    /// arrays (the coefficient computed in double, rounded once, one fp32 multiply per element).
    /// </summary>
    public static (List<float[]> A, List<float[]> B, int Rank) WeightedFactors(ModuleInput m, MergeOptions o)
    {
        int r = RequireEqualRanks(m, FactorSpaceRanks);
        var xa = new List<float[]>(m.Tasks.Count);
        var xb = new List<float[]>(m.Tasks.Count);
        for (int task = 0; task < m.Tasks.Count; task++)
        {
            float cb = (float)Math.Sqrt(Math.Abs(o.WeightOf(task) * m.Tasks[task].Scale));
            float ca = Math.Sign(o.WeightOf(task)) * cb;
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

    /// <summary>ΔW_n = s_n·B_n·A_n on the backend (family 3, one term, bit-exact: the same bits on every backend).</summary>
    public static float[] Delta(IMergeBackend backend, ModuleInput m, int task)
    {
        var t = m.Tasks[task];
        if (backend is CpuBackend cpu)
        {
            // Host memory already: the product reads the factors and writes the result array in place.
            var delta = GC.AllocateUninitializedArray<float>(checked(m.DOut * m.DIn));
            using var hb = cpu.Wrap(t.B);
            using var ha = cpu.Wrap(t.A);
            using var ho = cpu.Wrap(delta);
            LowRankTerm[] hostTerms = [new LowRankTerm(hb, 0, ha, 0, t.Rank, (float)t.Scale)];
            cpu.LowRankProduct(hostTerms, m.DOut, m.DIn, new ProductTile(0, m.DOut, ho, BitExact: true));
            return delta;
        }
        using var b = backend.Allocate(Math.Max(1, t.B.LongLength) * 4);
        using var a = backend.Allocate(Math.Max(1, t.A.LongLength) * 4);
        using var o = backend.Allocate(Math.Max(1, (long)m.DOut * m.DIn) * 4);
        backend.Upload(MemoryMarshal.AsBytes(t.B.AsSpan()), b, 0);
        backend.Upload(MemoryMarshal.AsBytes(t.A.AsSpan()), a, 0);
        LowRankTerm[] terms = [new LowRankTerm(b, 0, a, 0, t.Rank, (float)t.Scale)];
        // Bit-exact: the delta-space methods trim this ΔW by magnitude, and the masks must be the same on
        // every backend, which an fp32 product (fused or not, in any order) does not guarantee.
        backend.LowRankProduct(terms, m.DOut, m.DIn, new ProductTile(0, m.DOut, o, BitExact: true));
        var result = GC.AllocateUninitializedArray<float>(checked(m.DOut * m.DIn));
        backend.Download(o, 0, MemoryMarshal.AsBytes(result.AsSpan()));
        return result;
    }

    /// <summary>
    /// The exact rank-Σr pair of Σ_n B_n·diag(c_n)·A_n: B = [B_1·diag(c_1) | …] (d_out × Σr),
    /// A = [A_1; …] (Σr × d_in), scale 1. <paramref name="coefficient"/>(n, j) is rounded once to fp32.
    /// </summary>
    public static LowRankResult Concatenate(ModuleInput m, IReadOnlyList<float[]> bs, IReadOnlyList<float[]> @as,
        Func<int, int, double> coefficient, ModuleStats stats)
    {
        int total = m.Tasks.Sum(t => t.Rank), dOut = m.DOut, dIn = m.DIn;
        // Every entry is written below, so skip the zeroing.
        var b = m.NewArray(checked(dOut * total));
        var a = m.NewArray(checked(total * dIn));
        int col = 0;
        for (int task = 0; task < m.Tasks.Count; task++)
        {
            int r = m.Tasks[task].Rank;
            var coef = new float[r];
            for (int j = 0; j < r; j++) coef[j] = (float)coefficient(task, j);
            ScaleColumnsInto(bs[task], coef, dOut, r, b, total, col);
            Array.Copy(@as[task], 0, a, (long)col * dIn, (long)r * dIn);
            col += r;
        }
        return new LowRankResult(b, a, total, 1.0, total) { Stats = stats };
    }

    /// <summary>
    /// Host threads for the merge's own array passes: the CPU backend's thread count (so
    /// <c>--threads</c> holds everywhere), every core when the kernels run on a device.
    /// </summary>
    public static ParallelOptions HostParallel(IMergeBackend backend) =>
        new() { MaxDegreeOfParallelism = backend is CpuBackend cpu ? cpu.Threads : Environment.ProcessorCount };

    /// <summary>
    /// Trims every tensor in place to its top-ρ magnitudes (family 1, each tensor on its own) and
    /// returns the selections; a non-finite value is an input error naming the task. On the CPU backend
    /// the arrays are trimmed where they lie (large ones with every thread, small ones one per thread);
    /// a device gets them packed into one batched launch and they are read back.
    /// </summary>
    public static SelectionResult[] TrimInPlace(IMergeBackend backend, List<float[]> xs, double density, string path)
    {
        var sel = new SelectionResult[xs.Count];
        if (backend is CpuBackend cpu)
        {
            var bad = new bool[xs.Count];
            var small = Enumerable.Range(0, xs.Count).Where(i => xs[i].Length < LargeTensor).ToArray();
            ParallelFor(small.Length, HostParallel(cpu), j =>
            {
                try { sel[small[j]] = HostKernels.SelectByMagnitude(xs[small[j]], density); }
                catch (NonFiniteInputException) { bad[small[j]] = true; }
            });
            for (int i = 0; i < xs.Count; i++)
            {
                if (xs[i].Length < LargeTensor) continue;
                using var buffer = cpu.Wrap(xs[i]);
                try { sel[i] = cpu.SelectByMagnitude(buffer, new TensorRange(0, xs[i].Length), density); }
                catch (NonFiniteInputException) { bad[i] = true; }
            }
            int first = Array.IndexOf(bad, true);
            if (first >= 0) throw NonFinite(path, first);
            return sel;
        }
        using var packed = new PackedTensors(backend, xs);
        try { backend.SelectByMagnitudeBatched(packed.Buffer, packed.Ranges, density, sel); }
        catch (NonFiniteInputException e)
        {
            throw NonFinite(path, e.RangeIndex);
        }
        var trimmed = packed.ReadBack();
        for (int i = 0; i < xs.Count; i++) xs[i] = trimmed[i];
        return sel;
    }

    /// <summary>Tensors this long are selected with every thread on their own (dense task deltas).</summary>
    private const int LargeTensor = 1 << 20;

    /// <summary>
    /// <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/> that rethrows the first failure
    /// as itself, not wrapped in an <see cref="AggregateException"/>, so an input error read on a worker
    /// (a truncated file, say) reaches the command's one-line error handling unchanged.
    /// </summary>
    public static void ParallelFor(int count, ParallelOptions parallel, Action<int> body)
    {
        try { Parallel.For(0, count, parallel, body); }
        catch (AggregateException e) when (e.InnerExceptions.Count > 0)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
        }
    }

    /// <summary>Elements per work item of the fused sums: a few L1-sized blocks of every input.</summary>
    private const int SumChunk = 4096;

    /// <summary>
    /// dst = λ·(x_0 + x_1 + … + x_{N−1}), added in task order and multiplied once, as the scalar
    /// definition; one pass over memory (each block of dst stays in L1 while every input is added).
    /// </summary>
    public static void SumThenScale(IReadOnlyList<float[]> xs, float lambda, float[] dst, ParallelOptions parallel)
    {
        var x = xs.ToArray();
        int n = dst.Length;
        Parallel.For(0, (n + SumChunk - 1) / SumChunk, parallel, c =>
        {
            int start = c * SumChunk, len = Math.Min(SumChunk, n - start);
            var d = dst.AsSpan(start, len);
            x[0].AsSpan(start, len).CopyTo(d);
            for (int t = 1; t < x.Length; t++) TensorPrimitives.Add(d, x[t].AsSpan(start, len), d);
            TensorPrimitives.Multiply(d, lambda, d);
        });
    }

    /// <summary>
    /// dst[i, j] = λ·Σ_t x_t[i, j]·s_t[j] for rows × r matrices: each product rounded before its add
    /// (no fused multiply-add), tasks in order from 0, then one multiply by λ; one pass over memory.
    /// </summary>
    public static void SumScaledColumnsThenScale(IReadOnlyList<float[]> xs, IReadOnlyList<float[]> s, int rows, int r, float lambda,
        float[] dst, ParallelOptions parallel)
    {
        var x = xs.ToArray();
        var c = s.ToArray();
        int w = Vector256<float>.Count;
        bool simd = Vector256.IsHardwareAccelerated && r % w == 0;
        // The coefficients as vectors, task-major: sv[t·(r/w) + v] holds s_t[v·w .. v·w + w).
        var sv = simd ? new Vector256<float>[x.Length * (r / w)] : [];
        for (int t = 0; t < x.Length && simd; t++)
            for (int v = 0; v < r / w; v++) sv[t * (r / w) + v] = Vector256.Create(c[t], v * w);
        int rowsPerChunk = Math.Max(1, SumChunk / Math.Max(1, r));
        Parallel.For(0, (rows + rowsPerChunk - 1) / rowsPerChunk, parallel, chunk =>
        {
            int r0 = chunk * rowsPerChunk, r1 = Math.Min(rows, r0 + rowsPerChunk);
            var d = dst.AsSpan(r0 * r, (r1 - r0) * r);
            d.Clear();
            for (int t = 0; t < x.Length; t++)
            {
                var xt = x[t].AsSpan(r0 * r, d.Length);
                if (simd)
                {
                    ref float xr = ref MemoryMarshal.GetReference(xt);
                    ref float dr = ref MemoryMarshal.GetReference(d);
                    int vs = r / w;
                    for (int o = 0, k = 0; o < d.Length; o += w, k = k + 1 == vs ? 0 : k + 1)
                        (Vector256.LoadUnsafe(ref xr, (nuint)o) * sv[t * vs + k] + Vector256.LoadUnsafe(ref dr, (nuint)o)).StoreUnsafe(ref dr, (nuint)o);
                }
                else
                    for (int o = 0; o < d.Length; o++) d[o] = xt[o] * c[t][o % r] + d[o];
            }
            TensorPrimitives.Multiply(d, lambda, d);
        });
    }

    /// <summary>
    /// dst[i, col + j] = x[i, j]·s[j] for the rows × r matrix x, into a matrix with row stride
    /// <paramref name="stride"/>.
    /// </summary>
    internal static void ScaleColumnsInto(float[] x, float[] s, int rows, int r, float[] dst, int stride, int col)
    {
        int w = Vector256<float>.Count;
        if (Vector256.IsHardwareAccelerated && r % w == 0)
        {
            var sv = new Vector256<float>[r / w];
            for (int v = 0; v < sv.Length; v++) sv[v] = Vector256.Create(s, v * w);
            for (int i = 0; i < rows; i++)
                for (int v = 0; v < sv.Length; v++)
                {
                    int o = i * stride + col + v * w;
                    (Vector256.Create(x, i * r + v * w) * sv[v]).CopyTo(dst, o);
                }
            return;
        }
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < r; j++)
            {
                dst[(long)i * stride + col + j] = x[(long)i * r + j] * s[j];
            }
    }
}
