using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels;
using static CopaKernels.Merge.Routes.HostLoops;

namespace CopaKernels.Merge.Routes;

/// <summary>
/// copa-official's ordered sums over tasks (SEMANTICS §3), on factors in F32 arrays or in their stored
/// 16-bit format, into F32 arrays or straight into the output's bytes.
/// </summary>
internal static class OrderedSums
{
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
    internal readonly struct Raw16Rows(IReadOnlyList<float[]> storage, DType format) : IFactorRows
    {
        private ReadOnlySpan<ushort> Bits(int task, int start, int length) =>
            MemoryMarshal.Cast<float, ushort>(storage[task].AsSpan()).Slice(start, length);

        public void CopyTo(int task, int start, Span<float> d) => ElementCodec.Widen(Bits(task, start, d.Length), format, d);

        public void AddTo(int task, int start, Span<float> d)
        {
            var bits = Bits(task, start, d.Length);
            int i = format == DType.BF16 ? Bf16.AddTo(bits, d) : 0;
            if (i == d.Length) return;
            var x = Widened(bits[i..]);
            TensorPrimitives.Add(d[i..], x, d[i..]);
        }

        public void ScaleAddTo(int task, int start, float[] c, Span<float> d)
        {
            var bits = Bits(task, start, d.Length);
            if (format == DType.BF16 && Bf16.ScaleAddTo(bits, c, d)) return;
            ScaleAdd(Widened(bits), c, d);
        }

        private Span<float> Widened(ReadOnlySpan<ushort> bits)
        {
            var x = ThreadScratch.Get(ref t_widen, bits.Length, SumChunk);
            ElementCodec.Widen(bits, format, x);
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
}
