using System.Runtime.CompilerServices;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Runtime.InteropServices;
using CopaKernels.Formats;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Merge;

/// <summary>The steps several methods share: factor-space weighting, dense task deltas, rank-Σr concatenation.</summary>
internal static class ModuleOps
{
    /// <summary>The one message for a non-finite input value (task is 0-based).</summary>
    public static TaskInputException NonFinite(string path, int task) =>
        new(task, path, $"adapter {task + 1} holds NaN or Inf in this module", values: true);

    /// <summary>
    /// A NaN or Inf in a value made from task <paramref name="task"/>'s factors (<paramref name="what"/>: its
    /// dense ΔW, its weighted factors): the input's fault when the factors themselves hold one, else an
    /// overflow of the scaling, which the message names (<paramref name="scaling"/>) instead of blaming the input.
    /// </summary>
    public static TaskInputException NonFiniteDerived(ModuleInput m, int task, string what, string scaling)
    {
        var t = m.Tasks[task];
        if (Formats.Numerics.NonFinite.Any(t.A) || Formats.Numerics.NonFinite.Any(t.B)) return NonFinite(m.Path, task);
        return new TaskInputException(task, m.Path,
            $"{what} of adapter {task + 1} overflows F32 ({scaling}); its values are finite: lower the scaling");
    }

    /// <summary>What a NaN or Inf in task n's weighted factor (factor space: √|w_n·s_n| times it) means.</summary>
    public static Func<int, TaskInputException> WeightedOverflow(ModuleInput m, MergeOptions o, string factor) =>
        task => NonFiniteDerived(m, task, $"{factor} weighted by √|w·s|",
            $"weight {G(o.WeightOf(task))} × LoRA scale {G(m.Tasks[task].Scale)}");

    /// <summary>What a NaN or Inf in task n's dense ΔW_n = s_n·B_n·A_n (times w_n where <paramref name="o"/> is given) means.</summary>
    public static Func<int, TaskInputException> DeltaOverflow(ModuleInput m, MergeOptions? o = null) =>
        task => NonFiniteDerived(m, task, o is null ? "ΔW = s·B·A" : "w·ΔW = w·s·B·A",
            (o is null ? "" : $"weight {G(o.WeightOf(task))}, ") + $"LoRA scale {G(m.Tasks[task].Scale)}");

    /// <summary>A number for messages: four significant digits, invariant, "1.25e+39".</summary>
    internal static string G(double x) => x.ToString("G4", System.Globalization.CultureInfo.InvariantCulture).Replace("E", "e");

    /// <summary>The index of the first rank that differs from the first one (the task to name), or −1 when all agree.</summary>
    public static int FirstDiffering(IReadOnlyList<int> ranks)
    {
        for (int i = 1; i < ranks.Count; i++)
            if (ranks[i] != ranks[0]) return i;
        return -1;
    }

    /// <summary>Why factor-space merges need one rank.</summary>
    public const string FactorSpaceRanks = "factor space needs equal ranks (use space delta)";

    /// <summary>The common rank r; throws naming the module when the adapters' ranks differ.</summary>
    public static int RequireEqualRanks(ModuleInput m, string why) =>
        ResultForm.EqualRanks(m.Path, m.Tasks.Select(t => (t.Rank, t.Alpha)).ToList(), why);

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
    /// <remarks>
    /// B is built row by row, each output row written once with every task's segment (one fp32
    /// multiply per entry), in row blocks over the threads: column by column, task after task, each
    /// task's pass would stream the whole d_out × Σr output through the cache again.
    /// </remarks>
    public static LowRankResult Concatenate(ModuleInput m, IReadOnlyList<float[]> bs, IReadOnlyList<float[]> @as,
        Func<int, int, double> coefficient, ModuleStats stats, ParallelOptions parallel)
    {
        int n = m.Tasks.Count, dOut = m.DOut, dIn = m.DIn;
        var (coef, start) = ColumnCoefficients(m, coefficient);
        int total = start[n];
        // Every entry is written below, so skip the zeroing.
        var b = m.NewArray(checked(dOut * total));
        var a = m.NewArray(checked(total * dIn));
        int rowsPerChunk = Math.Max(1, SumChunk / Math.Max(1, total));
        ParallelFor((dOut + rowsPerChunk - 1) / rowsPerChunk + n, parallel, item =>
        {
            int chunks = (dOut + rowsPerChunk - 1) / rowsPerChunk;
            if (item >= chunks)
            {
                int task = item - chunks; // A: the tasks' trimmed A's one under the other
                Array.Copy(@as[task], 0, a, (long)start[task] * dIn, (long)m.Tasks[task].Rank * dIn);
                return;
            }
            for (int i = item * rowsPerChunk, end = Math.Min(dOut, i + rowsPerChunk); i < end; i++)
                for (int task = 0; task < n; task++)
                {
                    int r = start[task + 1] - start[task];
                    MultiplyShort(bs[task].AsSpan(i * r, r), coef.AsSpan(start[task], r), b.AsSpan(i * total + start[task], r));
                }
        });
        return new LowRankResult(b, a, total, 1.0, total) { Stats = stats };
    }

    /// <summary>One fp32 coefficient per inner index of the concatenation (coefficient(n, j) rounded once), and where each task's columns start.</summary>
    internal static (float[] Coef, int[] Start) ColumnCoefficients(ModuleInput m, Func<int, int, double> coefficient)
    {
        int n = m.Tasks.Count;
        var start = TaskStarts(m);
        var coef = new float[start[n]];
        for (int task = 0; task < n; task++)
            for (int j = 0; j < m.Tasks[task].Rank; j++) coef[start[task] + j] = (float)coefficient(task, j);
        return (coef, start);
    }

    /// <summary>Where each task's inner indices start in the rank-Σr concatenation (N + 1 entries, the last Σ r_n).</summary>
    internal static int[] TaskStarts(ModuleInput m)
    {
        var start = new int[m.Tasks.Count + 1];
        for (int task = 0; task < m.Tasks.Count; task++) start[task + 1] = start[task] + m.Tasks[task].Rank;
        return start;
    }

    /// <summary>
    /// Host threads for the merge's own array passes: the CPU backend's thread count (so
    /// <c>--threads</c> holds everywhere), every core when the kernels run on a device.
    /// </summary>
    public static ParallelOptions HostParallel(IMergeBackend backend) =>
        new() { MaxDegreeOfParallelism = backend is CpuBackend cpu ? cpu.Threads : Environment.ProcessorCount };

    /// <summary>
    /// Trims every tensor in place to its top-ρ magnitudes (family 1, each tensor on its own) and
    /// returns the selections; a non-finite value in task n's tensor throws <paramref name="nonFinite"/>(n). On the CPU backend
    /// the arrays are trimmed where they lie (large ones with every thread, small ones one per thread);
    /// a device gets them packed into one batched launch and they are read back.
    /// </summary>
    public static SelectionResult[] TrimInPlace(IMergeBackend backend, List<float[]> xs, double density, Func<int, TaskInputException> nonFinite)
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
            if (first >= 0) throw nonFinite(first);
            return sel;
        }
        using var packed = new PackedTensors(backend, xs);
        try { backend.SelectByMagnitudeBatched(packed.Buffer, packed.Ranges, density, sel); }
        catch (NonFiniteInputException e)
        {
            throw nonFinite(e.RangeIndex);
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

    /// <summary>Runs <paramref name="body"/>(start, end) over [0, <paramref name="length"/>) in blocks of <paramref name="block"/> elements spread over the threads.</summary>
    public static void ForBlocks(int length, int block, ParallelOptions parallel, Action<int, int> body) =>
        ParallelFor((length + block - 1) / block, parallel, c => body(c * block, Math.Min(length, (c + 1) * block)));

    /// <summary>Elements per work item of the fused sums: a few L1-sized blocks of every input.</summary>
    internal const int SumChunk = 4096;

    /// <summary>
    /// Where the ordered sums read task t's values from (F32 arrays, or 16-bit storage), and the three
    /// element-wise steps they take on them, each exactly the fp32 operation the scalar definition names.
    /// </summary>
    internal interface IFactorRows
    {
        /// <summary>d = x_t[start ..].</summary>
        void CopyTo(int task, int start, Span<float> d);

        /// <summary>d = d + x_t[start ..].</summary>
        void AddTo(int task, int start, Span<float> d);

        /// <summary>d[o] = x_t[start + o]·c[o mod r] + d[o] (product rounded, then added), start a multiple of r.</summary>
        void ScaleAddTo(int task, int start, float[] c, Span<float> d);
    }

    /// <summary>F32 factor arrays, read where they lie.</summary>
    internal readonly struct F32Rows(IReadOnlyList<float[]> x) : IFactorRows
    {
        public void CopyTo(int task, int start, Span<float> d) => x[task].AsSpan(start, d.Length).CopyTo(d);

        public void AddTo(int task, int start, Span<float> d) => TensorPrimitives.Add(d, x[task].AsSpan(start, d.Length), d);

        public void ScaleAddTo(int task, int start, float[] c, Span<float> d) => ScaleAdd(x[task].AsSpan(start, d.Length), c, d);
    }

    /// <summary>
    /// Factors in a 16-bit format, stored in the first half of each array's bytes. BF16 is widened in
    /// registers inside each step's loop (a shift); F16 block by block through a scratch.
    /// </summary>
    internal readonly struct Raw16Rows(IReadOnlyList<float[]> storage, Float16Format format) : IFactorRows
    {
        private ReadOnlySpan<ushort> Bits(int task, int start, int length) =>
            MemoryMarshal.Cast<float, ushort>(storage[task].AsSpan()).Slice(start, length);

        public void CopyTo(int task, int start, Span<float> d) => Float16Formats.Widen(Bits(task, start, d.Length), format, d);

        public void AddTo(int task, int start, Span<float> d)
        {
            var bits = Bits(task, start, d.Length);
            int i = format == Float16Format.BFloat16 ? Bf16.AddTo(bits, d) : 0;
            if (i == d.Length) return;
            var x = Widened(bits[i..]);
            TensorPrimitives.Add(d[i..], x, d[i..]);
        }

        public void ScaleAddTo(int task, int start, float[] c, Span<float> d)
        {
            var bits = Bits(task, start, d.Length);
            if (format == Float16Format.BFloat16 && Bf16.ScaleAddTo(bits, c, d)) return;
            ScaleAdd(Widened(bits), c, d);
        }

        private Span<float> Widened(ReadOnlySpan<ushort> bits)
        {
            var x = ThreadScratch.Get(ref t_widen, bits.Length, SumChunk);
            Float16Formats.Widen(bits, format, x);
            return x;
        }
    }

    [ThreadStatic] private static float[]? t_widen;

    /// <summary>The BF16 steps of <see cref="Raw16Rows"/>: widening is a 16-bit shift, done in registers.</summary>
    private static class Bf16
    {
        private static Vector512<float> Load(ref ushort p, int i) => FloatConversion.Bf16ToSingle(Vector256.LoadUnsafe(ref p, (nuint)i));

        /// <summary>d += widen(bits) for the leading multiple of 16 elements (where Vector512 is accelerated); returns how many were done.</summary>
        public static int AddTo(ReadOnlySpan<ushort> bits, Span<float> d)
        {
            if (!Vector512.IsHardwareAccelerated) return 0;
            ref ushort b = ref MemoryMarshal.GetReference(bits);
            ref float dr = ref MemoryMarshal.GetReference(d);
            int i = 0;
            for (; i <= d.Length - 16; i += 16)
                (Vector512.LoadUnsafe(ref dr, (nuint)i) + Load(ref b, i)).StoreUnsafe(ref dr, (nuint)i);
            return i;
        }

        /// <summary>d[o] = widen(bits[o])·c[o mod r] + d[o] when r is a multiple of 16 (AVX-512); false otherwise.</summary>
        public static bool ScaleAddTo(ReadOnlySpan<ushort> bits, float[] c, Span<float> d)
        {
            int r = c.Length;
            if (!Vector512.IsHardwareAccelerated || r % 16 != 0 || d.Length % r != 0) return false;
            ref ushort b = ref MemoryMarshal.GetReference(bits);
            ref float dr = ref MemoryMarshal.GetReference(d);
            for (int o = 0; o < d.Length; o += r)
                for (int j = 0; j < r; j += 16)
                    (Load(ref b, o + j) * Vector512.Create(c, j) + Vector512.LoadUnsafe(ref dr, (nuint)(o + j))).StoreUnsafe(ref dr, (nuint)(o + j));
            return true;
        }
    }

    /// <summary>d[o] = x[o]·c[o mod r] + d[o]: the product rounded, then added (no fused multiply-add), r = c.Length.</summary>
    private static void ScaleAdd(ReadOnlySpan<float> x, float[] c, Span<float> d)
    {
        int r = c.Length, w = Vector256<float>.Count;
        if (Vector256.IsHardwareAccelerated && r % w == 0)
        {
            ref float xr = ref MemoryMarshal.GetReference(x);
            ref float dr = ref MemoryMarshal.GetReference(d);
            for (int o = 0; o < d.Length; o += r)
                for (int j = 0; j < r; j += w)
                    (Vector256.LoadUnsafe(ref xr, (nuint)(o + j)) * Vector256.Create(c, j) + Vector256.LoadUnsafe(ref dr, (nuint)(o + j))).StoreUnsafe(ref dr, (nuint)(o + j));
            return;
        }
        for (int o = 0; o < d.Length; o++) d[o] = x[o] * c[o % r] + d[o];
    }

    /// <summary>
    /// copa-official's two sums in one parallel loop (one join a module, not two): A = λ·(a_0 + … + a_{N−1})
    /// (r × d_in, added in task order, multiplied once) and B[i, j] = λ·Σ_t b_t[i, j]·s_t[j] (d_out × r,
    /// each product rounded before its add, no fused multiply-add, from +0), as the scalar definitions.
    /// One pass over memory: each block stays in L1 while every input is added; blocks go to their
    /// <see cref="SumSink"/> as they are done.
    /// </summary>
    internal static void SumFactorsThenScale<TRows>(TRows a, TRows b, int tasks, IReadOnlyList<float[]> s, int dOut, int r, int dIn,
        float lambda, SumSink aOut, SumSink bOut, ParallelOptions parallel) where TRows : IFactorRows
    {
        var c = s.ToArray();
        int aLength = r * dIn;
        int aChunks = (aLength + SumChunk - 1) / SumChunk;
        int rowsPerChunk = Math.Max(1, SumChunk / Math.Max(1, r));
        int bChunks = (dOut + rowsPerChunk - 1) / rowsPerChunk;
        ParallelFor(aChunks + bChunks, parallel, item =>
        {
            if (item < aChunks)
            {
                int start = item * SumChunk;
                var d = aOut.Block(start, Math.Min(SumChunk, aLength - start));
                a.CopyTo(0, start, d);
                for (int t = 1; t < tasks; t++) a.AddTo(t, start, d);
                TensorPrimitives.Multiply(d, lambda, d);
                aOut.Done(start, d);
                return;
            }
            int r0 = (item - aChunks) * rowsPerChunk, r1 = Math.Min(dOut, r0 + rowsPerChunk);
            var e = bOut.Block(r0 * r, (r1 - r0) * r);
            // From +0, as the definition: the first product is added to +0 too (−0·… becomes +0).
            e.Clear();
            for (int t = 0; t < c.Length; t++) b.ScaleAddTo(t, r0 * r, c[t], e);
            TensorPrimitives.Multiply(e, lambda, e);
            bOut.Done(r0 * r, e);
        });
    }

    /// <summary>
    /// Where the blocks of a sum go: an F32 array, or the bytes of an output dtype, each block encoded
    /// (<see cref="ElementCodec.Encode"/>, element by element, so the bytes are the array's converted)
    /// from a per-thread scratch as soon as it is summed, so that no F32 copy of the result exists.
    /// </summary>
    internal readonly struct SumSink
    {
        private readonly float[]? _values;
        private readonly DType _type;
        private readonly byte[]? _bytes;
        private readonly string _tensor;
        private readonly int _columns;

        private SumSink(float[]? values, DType type, byte[]? bytes, string tensor, int columns)
        {
            _values = values;
            _type = type;
            _bytes = bytes;
            _tensor = tensor;
            _columns = columns;
        }

        /// <summary>Blocks written into <paramref name="values"/>.</summary>
        public static SumSink Floats(float[] values) => new(values, DType.F32, null, "", 0);

        /// <summary>
        /// Blocks encoded as <paramref name="type"/> into <paramref name="bytes"/>, at their elements' offsets;
        /// a block that encodes to NaN or ±Inf throws <see cref="NonFiniteResultException"/> for <paramref name="tensor"/>.
        /// </summary>
        public static SumSink Encoded(DType type, byte[] bytes, string tensor, int columns) => new(null, type, bytes, tensor, columns);

        /// <summary>Where the block of elements [start, start + length) is summed.</summary>
        public Span<float> Block(int start, int length) =>
            _values != null ? _values.AsSpan(start, length)
                : ThreadScratch.Get(ref t_block, length, SumChunk);

        /// <summary>Hands a summed block on (encodes it where the sink holds bytes).</summary>
        public void Done(int start, Span<float> block)
        {
            if (_bytes == null) return;
            int size = _type.Bits() / 8;
            var into = _bytes.AsSpan(start * size, block.Length * size);
            if (!ElementCodec.EncodeChecked(_type, block, into))
                throw new NonFiniteResultException(_tensor, start + Formats.Numerics.NonFinite.IndexOf(_type, into), _columns, _type.ToString());
        }
    }

    [ThreadStatic] private static float[]? t_block;

    /// <summary>
    /// dst = x ⊙ c for the short spans of one row of a low-rank factor (r entries): the same one fp32
    /// multiply per entry as <see cref="TensorPrimitives.Multiply(ReadOnlySpan{float}, ReadOnlySpan{float}, Span{float})"/>,
    /// without its per-call dispatch, which costs as much as the work at r = 16.
    /// </summary>
    private static void MultiplyShort(ReadOnlySpan<float> x, ReadOnlySpan<float> c, Span<float> dst)
    {
        int n = dst.Length, i = 0;
        ref float xr = ref MemoryMarshal.GetReference(x);
        ref float cr = ref MemoryMarshal.GetReference(c);
        ref float dr = ref MemoryMarshal.GetReference(dst);
        if (x.Length < n || c.Length < n) throw new ArgumentException("spans shorter than the destination");
        if (Vector512.IsHardwareAccelerated)
            for (; i <= n - Vector512<float>.Count; i += Vector512<float>.Count)
                (Vector512.LoadUnsafe(ref xr, (nuint)i) * Vector512.LoadUnsafe(ref cr, (nuint)i)).StoreUnsafe(ref dr, (nuint)i);
        if (Vector256.IsHardwareAccelerated)
            for (; i <= n - Vector256<float>.Count; i += Vector256<float>.Count)
                (Vector256.LoadUnsafe(ref xr, (nuint)i) * Vector256.LoadUnsafe(ref cr, (nuint)i)).StoreUnsafe(ref dr, (nuint)i);
        for (; i < n; i++) Unsafe.Add(ref dr, i) = Unsafe.Add(ref xr, i) * Unsafe.Add(ref cr, i);
    }
}
