using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Runtime.Intrinsics;
using Bits = CopaKernels.Formats.Numerics.NonFinite;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// Families 3 and 4 on the CPU: one row tile of Σ_n B_n·diag(Factor_n·Scale_n)·A_n + base, as a single
/// GEMM with inner dimension K = Σ r_n, computed by a register-blocked FMA micro-kernel over packed panels.
/// </summary>
/// <remarks>
/// <para>Numerics. The coefficient c[k] = Factor_n·Scale_n[k] is one fp32 multiply, folded into the packed
/// B panel as B[i,k]·c[k] (a second fp32 multiply). Every output element is then one fused-multiply-add
/// chain acc = fma(B'[i,k], A[k,j], acc) over k = 0..K−1 in ascending order, starting from +0, accumulated
/// in fp32 registers; when K is split into blocks (K &gt; <see cref="KcMax"/>) the chain is parked in an
/// fp32 scratch tile between blocks and reloaded, which is exact, so the sequence of roundings is the same
/// as in one pass. The base element (widened exactly to fp32) is added once, and the fp32 result is
/// rounded once to the output type (BF16: nearest-even, NaN → 0x7FC0, as
/// <see cref="FloatConversion.SingleToBf16(float)"/>; F16: <see cref="FloatConversion.SingleToHalf"/>).
/// Scalar paths use <see cref="MathF.FusedMultiplyAdd"/>, bit-identical to the vector FMA, and the work
/// split depends only on the shapes, so the result is the same bits for every thread count, every
/// vector width and every K blocking.</para>
/// <para>Blocking. The micro-tile is MR = 6 rows × NR = 16 columns (two Vector256, 12 accumulators of the
/// 16 ymm registers; 12 FMAs per 2 loads + 6 broadcasts) or 6 × 64 with Vector512 (24 of the 32 zmm
/// registers; 24 FMAs per 4 loads + 6 broadcasts). Work items are row blocks × column groups; inside
/// one, the rows' B is packed once (scaled, 6-row k-major panels), then per column block of NC columns
/// and per K block of ≤ KC: the KC × NC slice of A is packed
/// (≤ 192 KiB, stays in L2) → 6-row B panel (KC × 6, stays in L1) → every NR-column A panel in one
/// micro-kernel call. Walking along rows keeps the output write to six sequential streams per thread,
/// which matters because at r = 16 the kernel is bound by writing the output, not by FLOPs. Stores are
/// ordinary (write-allocate): non-temporal stores, straight from the micro-kernel or as a second pass
/// over a cached 6-row strip, did not pay off even for outputs far larger than the caches (the
/// measurements are in bench/RESULTS.md).</para>
/// <para>Epilogue. F32 output with no base or an F32 base is finished on the accumulators in registers.
/// BF16 (base or output) needs more registers than the 12 accumulators leave free, so the tile is parked
/// in L1 and converted row by row with Vector256. F16, which has no vector conversion outside
/// TensorPrimitives, goes through a 6-row fp32 strip and the span conversions.</para>
/// <para>Aliasing. Base and output may be the very same region with the same type (in-place W += ΔW): each
/// element's base is read before that element is written, and no element is touched by two work items.
/// Partially overlapping base and output regions are not supported.</para>
/// </remarks>
internal static unsafe class LowRankProduct
{
    /// <summary>Which micro-kernel runs.</summary>
    internal enum KernelPath
    {
        /// <summary>Widest accelerated: Vector512, else Vector256 with FMA, else scalar.</summary>
        Auto,
        /// <summary><see cref="MathF.FusedMultiplyAdd"/> loops (no SIMD).</summary>
        Scalar,
        /// <summary>6 × 16 with Vector256.</summary>
        Vector256,
        /// <summary>6 × 64 with Vector512 (emulated by two Vector256 halves where not accelerated).</summary>
        Vector512,
    }

    /// <summary>Forces a path (tests compare the paths bit for bit). Not thread-safe; Auto in production.</summary>
    internal static KernelPath ForcedPath = KernelPath.Auto;

    private const int MR = 6;

    // The packed K × NC slice of A per work item: well under a Zen3/Skylake L2, leaving room for B and the output lines.
    private const int ABlockBytes = 192 * 1024;

    /// <summary>
    /// Longest K run in one pass. Wider products (8 tasks × rank 128) are split into balanced K blocks so
    /// that the 6 × KC slice of B stays in L1 and the A slice keeps NC ≥ 192 columns within its L2 budget.
    /// Tests lower it to exercise the split.
    /// </summary>
    internal static int KcMax = 256;

    // Cap on the packed B rows of one work item (K × rows), so scratch stays small at K = 1024.
    private const int BBlockBytes = 2 << 20;

    // Below this many multiply-adds the fork/join costs more than it saves.
    private const long ParallelMinFmas = 1L << 20;

    /// <summary>The path <see cref="KernelPath.Auto"/> picks on this machine.</summary>
    internal static KernelPath Selected =>
        Vector512.IsHardwareAccelerated ? KernelPath.Vector512
        : Vector256.IsHardwareAccelerated && Fma.IsSupported ? KernelPath.Vector256
        : KernelPath.Scalar;

    /// <summary>Computes the tile (arguments already validated by <see cref="CpuBackend.LowRankProduct"/>).</summary>
    public static void Run(CpuBackend backend, ReadOnlySpan<LowRankTerm> terms, long dOut, long dIn, in ProductTile tile)
    {
        if (tile.RowCount == 0 || dIn == 0) return;
        var job = new Job(backend, terms, dIn, tile);
        switch (ForcedPath != KernelPath.Auto ? ForcedPath : Selected)
        {
            case KernelPath.Vector512: job.Execute<Kernel512>(); break;
            case KernelPath.Vector256: job.Execute<Kernel256>(); break;
            default: job.Execute<KernelScalar>(); break;
        }
    }

    /// <summary>The shapes, pointers and work split of one call.</summary>
    private sealed class Job
    {
        private readonly int _threads;
        private readonly ParallelOptions _parallel;
        private readonly int _m, _k;
        private readonly long _n, _rowStart;
        private readonly nint[] _aRows;      // K row pointers into the A factors, in global k order
        private readonly nint[] _termB;      // B_n[0, 0] per term
        private readonly int[] _termRank, _termK0;
        private readonly float[] _coef;      // Factor_n · Scale_n[k], fp32, global k order
        private readonly byte* _out, _base;
        private readonly DType _outType, _baseType;
        private readonly bool _hasBase;
        private readonly int* _flag;         // ProductTile.NonFiniteFlag, or null

        // Work split, set by Execute: items = row blocks × column groups.
        private int _nr, _kc, _ncMax, _rowPanels, _panelsPerBlock, _rowBlocks, _colGroups;
        private long _groupCols;
        private bool _strip;

        public Job(CpuBackend backend, ReadOnlySpan<LowRankTerm> terms, long dIn, in ProductTile tile)
        {
            _threads = backend.Threads;
            _parallel = backend.Parallel;
            _m = tile.RowCount;
            _n = dIn;
            _rowStart = tile.RowStart;
            long k = 0;
            foreach (var t in terms) k += t.Rank;
            if (k > int.MaxValue / 64) throw new ArgumentOutOfRangeException(nameof(terms), $"inner dimension Σr = {k} is too large");
            _k = (int)k;
            _aRows = new nint[_k];
            _coef = new float[_k];
            _termB = new nint[terms.Length];
            _termRank = new int[terms.Length];
            _termK0 = new int[terms.Length];
            int k0 = 0;
            for (int t = 0; t < terms.Length; t++)
            {
                var term = terms[t];
                _termB[t] = (nint)((CpuBuffer)term.B).Floats(term.BOffset);
                _termRank[t] = term.Rank;
                _termK0[t] = k0;
                float* a = ((CpuBuffer)term.A).Floats(term.AOffset);
                float* s = term.Scale is CpuBuffer sb ? sb.Floats(term.ScaleOffset) : null;
                for (int r = 0; r < term.Rank; r++)
                {
                    _aRows[k0 + r] = (nint)(a + r * dIn);
                    _coef[k0 + r] = s != null ? term.Factor * s[r] : term.Factor;
                }
                k0 += term.Rank;
            }
            _outType = tile.OutputType;
            _out = ((CpuBuffer)tile.Output).Pointer + tile.OutputOffset * _outType.Size();
            if (tile.Base is CpuBuffer bb)
            {
                _hasBase = true;
                _baseType = tile.BaseType;
                _base = bb.Pointer + tile.BaseOffset * _baseType.Size();
            }
            if (tile.NonFiniteFlag is CpuBuffer fb) _flag = (int*)(fb.Pointer + tile.NonFiniteFlagOffset);
        }

        public void Execute<TK>() where TK : struct, IMicroKernel
        {
            _nr = TK.NR;
            _strip = _outType == DType.F16 || (_hasBase && _baseType == DType.F16);

            int kBlocks = _k <= KcMax ? 1 : (_k + KcMax - 1) / KcMax;
            _kc = (_k + kBlocks - 1) / kBlocks; // balanced K blocks
            _ncMax = (int)Math.Min(RoundUp(_n, _nr), Math.Max(_nr, ABlockBytes / (sizeof(float) * Math.Max(_kc, 1)) / _nr * _nr));
            _rowPanels = (_m + MR - 1) / MR;

            long fmas = (long)_m * _n * Math.Max(_k, 1);
            int threads = fmas < ParallelMinFmas ? 1 : _threads;
            // Items = row blocks × column groups: several per thread so that a noisy neighbour does not
            // leave one core idle at the end. Each item packs its rows of B and its columns of A, so the
            // grid is about square in packing cost: row blocks ≈ √(items·M/N).
            int wantItems = threads == 1 ? 1 : threads * 8;
            long colPanels = (_n + _nr - 1) / _nr;
            int maxPanels = Math.Max(1, BBlockBytes / (sizeof(float) * MR * Math.Max(_k, 1)));
            _rowBlocks = (int)Math.Clamp(Math.Round(Math.Sqrt(wantItems * (double)_m / _n)), 1, _rowPanels);
            _panelsPerBlock = Math.Min(maxPanels, (_rowPanels + _rowBlocks - 1) / _rowBlocks);
            _rowBlocks = (_rowPanels + _panelsPerBlock - 1) / _panelsPerBlock;
            _colGroups = (int)Math.Clamp((wantItems + _rowBlocks - 1) / _rowBlocks, 1, colPanels);
            _groupCols = (colPanels + _colGroups - 1) / _colGroups * _nr;
            _colGroups = (int)((_n + _groupCols - 1) / _groupCols);

            switch (_hasBase ? _baseType : (DType?)null, _outType)
            {
                case (null, DType.BF16): Dispatch<TK, Epilogue<NoBase, Bf16Out>>(threads); break;
                case (DType.F32, DType.F32): Dispatch<TK, Epilogue<F32Base, F32Out>>(threads); break;
                case (DType.F32, DType.BF16): Dispatch<TK, Epilogue<F32Base, Bf16Out>>(threads); break;
                case (DType.BF16, DType.F32): Dispatch<TK, Epilogue<Bf16Base, F32Out>>(threads); break;
                case (DType.BF16, DType.BF16): Dispatch<TK, Epilogue<Bf16Base, Bf16Out>>(threads); break;
                // F32 without base; F16 anywhere goes through the strip, whose micro-kernel stores plain F32.
                default: Dispatch<TK, Epilogue<NoBase, F32Out>>(threads); break;
            }
        }

        private void Dispatch<TK, TE>(int threads) where TK : struct, IMicroKernel where TE : struct, IEpilogue
        {
            int items = _rowBlocks * _colGroups;
            if (threads == 1 || items == 1)
            {
                var s = new Scratch(this);
                try { for (int i = 0; i < items; i++) RunItem<TK, TE>(i, s); }
                finally { s.Dispose(); }
            }
            else
            {
                Parallel.For(0, items, _parallel, () => new Scratch(this),
                    (i, _, s) => { RunItem<TK, TE>(i, s); return s; }, s => s.Dispose());
            }
        }

        private static long RoundUp(long x, int m) => (x + m - 1) / m * m;

        /// <summary>Per-worker packed panels and strips (64-byte aligned native memory).</summary>
        private sealed class Scratch : IDisposable
        {
            public readonly float* A, B, Partial, Strip, Row, Tile;
            public readonly int NcPad, StripStride;

            public Scratch(Job j)
            {
                NcPad = j._ncMax;
                // Strip rows padded by one panel: with a power-of-two NC the six rows would share L1 sets.
                StripStride = NcPad + j._nr;
                int kk = Math.Max(j._k, 1);
                A = Alloc((long)Math.Max(j._kc, 1) * NcPad);
                B = Alloc((long)kk * MR * j._panelsPerBlock);
                Partial = j._kc < j._k ? Alloc((long)MR * j._panelsPerBlock * NcPad) : null;
                Strip = j._strip ? Alloc((long)MR * StripStride) : null;
                Row = j._strip ? Alloc(NcPad) : null;
                Tile = Alloc(MR * j._nr);
            }

            private static float* Alloc(long floats) => (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);

            public void Dispose()
            {
                NativeMemory.AlignedFree(A);
                NativeMemory.AlignedFree(B);
                if (Partial != null) NativeMemory.AlignedFree(Partial);
                if (Strip != null) NativeMemory.AlignedFree(Strip);
                if (Row != null) NativeMemory.AlignedFree(Row);
                NativeMemory.AlignedFree(Tile);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void RunItem<TK, TE>(int item, Scratch s) where TK : struct, IMicroKernel where TE : struct, IEpilogue
        {
            int rb = item / _colGroups, cg = item % _colGroups;
            int p0 = rb * _panelsPerBlock, p1 = Math.Min(_rowPanels, p0 + _panelsPerBlock);
            long c0 = cg * _groupCols, width = Math.Min(_groupCols, _n - c0);
            // Column blocks of at most NC, balanced so that the last one is not a sliver.
            int colBlocks = (int)((width + _ncMax - 1) / _ncMax);
            int blockCols = (int)RoundUp((width + colBlocks - 1) / colBlocks, TK.NR);
            int nr = TK.NR;
            for (int p = p0; p < p1; p++) PackB(p * MR, s.B + (long)(p - p0) * MR * _k);

            for (long j0 = c0; j0 < c0 + width; j0 += blockCols)
            {
                int nc = (int)Math.Min(blockCols, c0 + width - j0);
                int panels = (nc + nr - 1) / nr;
                for (int k0 = 0; ; k0 += _kc)
                {
                    int kc = Math.Min(_kc, _k - k0);
                    bool last = k0 + kc >= _k;
                    PackA(j0, nc, nr, k0, kc, s.A);
                    for (int p = p0; p < p1; p++)
                    {
                        float* bp = s.B + (long)(p - p0) * MR * _k + (long)k0 * MR;
                        // K blocks after the first continue the fp32 chains parked in Partial: the same
                        // fma sequence as one pass over K, so the same bits.
                        float* partial = s.Partial + (long)(p - p0) * MR * s.NcPad;
                        float* init = k0 == 0 ? null : partial;
                        if (!last)
                            TK.Run<Epilogue<NoBase, F32Scratch>>(s.A, bp, kc, panels, (byte*)partial, s.NcPad * sizeof(float), null, 0, init, s.NcPad, null);
                        else
                            Finish<TK, TE>(s, p * MR, j0, nc, panels, bp, kc, init);
                    }
                    if (last) break;
                }
            }
        }

        /// <summary>The last K block of one 6-row panel across a column block, through the epilogue to the output.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Finish<TK, TE>(Scratch s, int i0, long j0, int nc, int panels, float* bp, int kc, float* init)
            where TK : struct, IMicroKernel where TE : struct, IEpilogue
        {
            int nr = TK.NR, mr = Math.Min(MR, _m - i0);
            if (_strip)
            {
                TK.Run<Epilogue<NoBase, F32Scratch>>(s.A, bp, kc, panels, (byte*)s.Strip, s.StripStride * sizeof(float), null, 0, init, s.NcPad, null);
                StripEpilogue(s, i0, mr, j0, nc);
                CheckFinite(i0, mr, j0, nc);
                return;
            }
            int os = TE.OutSize, bs = TE.BaseSize;
            nint ldo = (nint)(_n * os), ldb = (nint)(_n * bs);
            long e0 = i0 * _n + j0;
            byte* o = _out + e0 * os;
            byte* bo = _base + e0 * bs;
            int q0 = 0;
            if (mr == MR && TE.InRegisters)
            {
                q0 = nc / nr; // every whole panel in one call
                TK.Run<TE>(s.A, bp, kc, q0, o, ldo, bo, ldb, init, s.NcPad, _flag);
            }
            for (int q = q0; q < panels; q++)
            {
                int cols = Math.Min(nr, nc - q * nr);
                float* a = s.A + (long)q * kc * nr;
                byte* oq = o + q * nr * os, bq = bo + q * nr * bs;
                // Conversions need more registers than the 12 accumulators leave free: park the
                // tile in L1 and convert it row by row (the same arithmetic, so the same bits).
                TK.Run<Epilogue<NoBase, F32Scratch>>(a, bp, kc, 1, (byte*)s.Tile, nr * sizeof(float), null, 0, init == null ? null : init + q * nr, s.NcPad, null);
                if (mr == MR && cols == nr && Vector256.IsHardwareAccelerated)
                {
                    var seen = Vector256<uint>.Zero;
                    for (int i = 0; i < MR; i++, oq += ldo, bq += ldb)
                        for (int j = 0; j < nr; j += 16)
                            seen = TE.Worse(seen, TE.Store(Vector256.Load(s.Tile + i * nr + j), Vector256.Load(s.Tile + i * nr + j + 8), oq + j * os, bq + j * bs));
                    if (_flag != null && TE.NonFinite(seen)) Volatile.Write(ref *_flag, 1);
                    continue;
                }
                uint worst = 0;
                for (int i = 0; i < mr; i++, oq += ldo, bq += ldb)
                    for (int j = 0; j < cols; j++)
                        worst = Math.Max(worst, TE.Store(s.Tile[i * nr + j], oq + j * os, bq + j * bs));
                if (_flag != null && TE.NonFinite1(worst)) Volatile.Write(ref *_flag, 1);
            }
        }

        /// <summary>
        /// Raises the non-finite flag if rows i0.. of columns j0..j0+nc, just stored through the strip (F16
        /// output or base), hold NaN or ±Inf: the span conversions have no hook, and each converted row is
        /// still in L1. The other epilogues check the values in registers as they store them.
        /// </summary>
        private void CheckFinite(int i0, int mr, long j0, int nc)
        {
            if (_flag == null || Volatile.Read(ref *_flag) != 0) return;
            int os = _outType.Size();
            var dtype = _outType;
            for (int i = 0; i < mr; i++)
                if (NonFinite.Any(dtype, new ReadOnlySpan<byte>(_out + ((i0 + i) * _n + j0) * os, nc * os)))
                {
                    Volatile.Write(ref *_flag, 1);
                    return;
                }
        }

        /// <summary>Rows i0.. of the tile as a 6 × K panel, k-major, scaled by c[k]; missing rows are zero.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void PackB(int i0, float* dst)
        {
            int mr = Math.Min(MR, _m - i0);
            for (int i = 0; i < MR; i++)
            {
                if (i >= mr)
                {
                    for (int kk = 0; kk < _k; kk++) dst[kk * MR + i] = 0f;
                    continue;
                }
                long row = _rowStart + i0 + i;
                for (int t = 0; t < _termB.Length; t++)
                {
                    int r = _termRank[t], k0 = _termK0[t];
                    if (r == 0) continue;
                    float* src = (float*)_termB[t] + row * r;
                    float* d = dst + k0 * MR + i;
                    fixed (float* c = &_coef[k0])
                        for (int kk = 0; kk < r; kk++) d[kk * MR] = src[kk] * c[kk];
                }
            }
        }

        /// <summary>Columns j0..j0+nc of A rows k0..k0+kc as NR-wide panels, k-major; missing columns are zero.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void PackA(long j0, int nc, int nr, int k0, int kc, float* dst)
        {
            int full = nc / nr, rem = nc - full * nr;
            long panelStride = (long)kc * nr;
            for (int kk = 0; kk < kc; kk++)
            {
                // Row-wise: each A row slice is read sequentially (the rows are d_in·4 bytes apart, a
                // power of two in practice, so walking down a column would thrash one L1 set).
                float* src = (float*)_aRows[k0 + kk] + j0;
                float* d = dst + kk * nr;
                for (int q = 0; q < full; q++, src += nr, d += panelStride)
                    Unsafe.CopyBlockUnaligned(d, src, (uint)(nr * sizeof(float)));
                if (rem > 0)
                {
                    for (int c = 0; c < rem; c++) d[c] = src[c];
                    for (int c = rem; c < nr; c++) d[c] = 0f;
                }
            }
        }

        /// <summary>Base add and narrowing for rows i0.. of the strip, through the vectorised span conversions.</summary>
        private void StripEpilogue(Scratch s, int i0, int mr, long j0, int nc)
        {
            for (int i = 0; i < mr; i++)
            {
                var acc = new Span<float>(s.Strip + i * s.StripStride, nc);
                long e = (i0 + i) * _n + j0;
                if (_hasBase)
                {
                    // The whole base segment is read (into acc) before any of the output segment is written.
                    var row = new Span<float>(s.Row, nc);
                    switch (_baseType)
                    {
                        case DType.F32: TensorPrimitives.Add(acc, new ReadOnlySpan<float>((float*)_base + e, nc), acc); break;
                        case DType.BF16:
                            FloatConversion.Bf16ToSingle(new ReadOnlySpan<ushort>((ushort*)_base + e, nc), row);
                            TensorPrimitives.Add(acc, row, acc);
                            break;
                        default:
                            FloatConversion.HalfToSingle(new ReadOnlySpan<ushort>((ushort*)_base + e, nc), row);
                            TensorPrimitives.Add(acc, row, acc);
                            break;
                    }
                }
                switch (_outType)
                {
                    case DType.F32: acc.CopyTo(new Span<float>((float*)_out + e, nc)); break;
                    case DType.BF16: FloatConversion.SingleToBf16(acc, new Span<ushort>((ushort*)_out + e, nc)); break;
                    default: FloatConversion.SingleToHalf(acc, new Span<ushort>((ushort*)_out + e, nc)); break;
                }
            }
        }
    }

    /// <summary>Reads NR base elements as fp32 (exact widening).</summary>
    private interface IBaseRead
    {
        static abstract bool Present { get; }
        static abstract int Size { get; }
        static abstract Vector256<float> Load(byte* p);
        static abstract Vector512<float> Load512(byte* p);
        static abstract float Load1(byte* p);
    }

    private struct NoBase : IBaseRead
    {
        public static bool Present => false;
        public static int Size => 0;
        public static Vector256<float> Load(byte* p) => default;
        public static Vector512<float> Load512(byte* p) => default;
        public static float Load1(byte* p) => 0f;
    }

    private struct F32Base : IBaseRead
    {
        public static bool Present => true;
        public static int Size => sizeof(float);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* p) => Vector256.Load((float*)p);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load512(byte* p) => Vector512.Load((float*)p);
        public static float Load1(byte* p) => *(float*)p;
    }

    private struct Bf16Base : IBaseRead
    {
        public static bool Present => true;
        public static int Size => sizeof(ushort);
        // bf16 → fp32 is the exact 16-bit shift.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* p) => Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load((ushort*)p).ToVector256Unsafe()), 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load512(byte* p) => Vector512.ShiftLeft(Vector512.WidenLower(Vector256.Load((ushort*)p).ToVector512Unsafe()), 16).AsSingle();
        public static float Load1(byte* p) => FloatConversion.Bf16ToSingle(*(ushort*)p);
    }

    /// <summary>
    /// Rounds NR fp32 values once to the stored type and writes them; each store also returns a check
    /// vector of what it wrote, which <see cref="Worse(Vector256{uint}, Vector256{uint})"/> folds and <see cref="NonFinite(Vector256{uint})"/>
    /// tests, for the non-finite flag: a couple of operations on registers the store holds anyway.
    /// </summary>
    private interface IOutWrite
    {
        static abstract int Size { get; }
        /// <summary>Whether what is stored is output, checked for the non-finite flag (not a scratch tile parked in between).</summary>
        static abstract bool Checks { get; }
        static abstract Vector256<uint> Store(Vector256<float> lo, Vector256<float> hi, byte* p);
        static abstract Vector512<uint> Store(Vector512<float> lo, Vector512<float> hi, byte* p);
        static abstract uint Store1(float v, byte* p);
        static abstract Vector256<uint> Worse(Vector256<uint> a, Vector256<uint> b);
        static abstract Vector512<uint> Worse(Vector512<uint> a, Vector512<uint> b);
        static abstract bool NonFinite(Vector256<uint> check);
        static abstract bool NonFinite(Vector512<uint> check);
        static abstract bool NonFinite1(uint check);
    }

    /// <summary>F32 output. Check: the largest magnitude bits (sign cleared), not finite from the infinity pattern up.</summary>
    private struct F32Out : IOutWrite
    {
        public static int Size => sizeof(float);
        public static bool Checks => true;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<uint> Store(Vector256<float> lo, Vector256<float> hi, byte* p)
        {
            lo.Store((float*)p);
            hi.Store((float*)p + Vector256<float>.Count);
            return Vector256.Max(lo.AsUInt32() & Vector256.Create(Bits.F32Magnitude), hi.AsUInt32() & Vector256.Create(Bits.F32Magnitude));
        }
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<uint> Store(Vector512<float> lo, Vector512<float> hi, byte* p)
        {
            lo.Store((float*)p);
            hi.Store((float*)p + Vector512<float>.Count);
            return Vector512.Max(lo.AsUInt32() & Vector512.Create(Bits.F32Magnitude), hi.AsUInt32() & Vector512.Create(Bits.F32Magnitude));
        }
        public static uint Store1(float v, byte* p)
        {
            *(float*)p = v;
            return BitConverter.SingleToUInt32Bits(v) & Bits.F32Magnitude;
        }
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<uint> Worse(Vector256<uint> a, Vector256<uint> b) => Vector256.Max(a, b);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<uint> Worse(Vector512<uint> a, Vector512<uint> b) => Vector512.Max(a, b);
        public static bool NonFinite(Vector256<uint> check) => Vector256.GreaterThanOrEqualAny(check, Vector256.Create(Bits.F32Infinity));
        public static bool NonFinite(Vector512<uint> check) => Vector512.GreaterThanOrEqualAny(check, Vector512.Create(Bits.F32Infinity));
        public static bool NonFinite1(uint check) => check >= Bits.F32Infinity;
    }

    /// <summary>F32 stores into a scratch tile (partial K sums, the strip, the tile before conversion): not output, so not checked.</summary>
    private struct F32Scratch : IOutWrite
    {
        public static int Size => sizeof(float);
        public static bool Checks => false;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<uint> Store(Vector256<float> lo, Vector256<float> hi, byte* p)
        {
            lo.Store((float*)p);
            hi.Store((float*)p + Vector256<float>.Count);
            return default;
        }
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<uint> Store(Vector512<float> lo, Vector512<float> hi, byte* p)
        {
            lo.Store((float*)p);
            hi.Store((float*)p + Vector512<float>.Count);
            return default;
        }
        public static uint Store1(float v, byte* p)
        {
            *(float*)p = v;
            return 0;
        }
        public static Vector256<uint> Worse(Vector256<uint> a, Vector256<uint> b) => default;
        public static Vector512<uint> Worse(Vector512<uint> a, Vector512<uint> b) => default;
        public static bool NonFinite(Vector256<uint> check) => false;
        public static bool NonFinite(Vector512<uint> check) => false;
        public static bool NonFinite1(uint check) => false;
    }

    /// <summary>
    /// BF16 output. Check: the stored bits themselves with the sign cleared, as 16-bit lanes (not finite from
    /// 0x7F80 up), taken after the rounding, which is what can carry a finite fp32 value to ±Inf.
    /// </summary>
    private struct Bf16Out : IOutWrite
    {
        public static int Size => sizeof(ushort);
        public static bool Checks => true;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<uint> Store(Vector256<float> lo, Vector256<float> hi, byte* p)
        {
            // Rounded values are ≤ 0xFFFF, so the saturating pack is the plain narrowing; it works per
            // 128-bit lane, and the permute puts the quarters back in order.
            var r = Avx2.IsSupported
                ? Avx2.Permute4x64(Avx2.PackUnsignedSaturate(Round(lo).AsInt32(), Round(hi).AsInt32()).AsUInt64(), 0b11_01_10_00).AsUInt16()
                : Vector256.Narrow(Round(lo), Round(hi));
            r.Store((ushort*)p);
            return (r & Vector256.Create(Bits.Half16Magnitude)).AsUInt32();
        }
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<uint> Store(Vector512<float> lo, Vector512<float> hi, byte* p)
        {
            var r = Vector512.Narrow(Round(lo), Round(hi));
            r.Store((ushort*)p);
            return (r & Vector512.Create(Bits.Half16Magnitude)).AsUInt32();
        }
        public static uint Store1(float v, byte* p)
        {
            ushort r = FloatConversion.SingleToBf16(v);
            *(ushort*)p = r;
            return r & (uint)Bits.Half16Magnitude;
        }
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<uint> Worse(Vector256<uint> a, Vector256<uint> b) => Vector256.Max(a.AsUInt16(), b.AsUInt16()).AsUInt32();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<uint> Worse(Vector512<uint> a, Vector512<uint> b) => Vector512.Max(a.AsUInt16(), b.AsUInt16()).AsUInt32();
        public static bool NonFinite(Vector256<uint> check) => Vector256.GreaterThanOrEqualAny(check.AsUInt16(), Vector256.Create(Bits.Bf16Infinity));
        public static bool NonFinite(Vector512<uint> check) => Vector512.GreaterThanOrEqualAny(check.AsUInt16(), Vector512.Create(Bits.Bf16Infinity));
        public static bool NonFinite1(uint check) => check >= Bits.Bf16Infinity;

        // The same rule as FloatConversion.SingleToBf16: nearest-even on the dropped 16 bits, every NaN → 0x7FC0.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector256<uint> Round(Vector256<float> v)
        {
            var u = v.AsUInt32();
            var r = (u + Vector256.Create(0x7FFFu) + ((u >>> 16) & Vector256<uint>.One)) >>> 16;
            return Vector256.ConditionalSelect(Vector256.IsNaN(v).AsUInt32(), Vector256.Create(0x7FC0u), r);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<uint> Round(Vector512<float> v)
        {
            var u = v.AsUInt32();
            var r = (u + Vector512.Create(0x7FFFu) + ((u >>> 16) & Vector512<uint>.One)) >>> 16;
            return Vector512.ConditionalSelect(Vector512.IsNaN(v).AsUInt32(), Vector512.Create(0x7FC0u), r);
        }
    }

    /// <summary>What happens to one row of a finished micro-tile: base add (if any), then rounding and store.</summary>
    private interface IEpilogue
    {
        static abstract int OutSize { get; }
        static abstract int BaseSize { get; }
        /// <summary>Cheap enough to run on the accumulators without spilling them (F32 out, no or F32 base).</summary>
        static abstract bool InRegisters { get; }
        /// <summary>See <see cref="IOutWrite.Checks"/>: false compiles the check out of the micro-kernel.</summary>
        static abstract bool Checks { get; }
        // Each store returns its output writer's check vector (IOutWrite), folded with Worse and tested with NonFinite.
        static abstract Vector256<uint> Store(Vector256<float> lo, Vector256<float> hi, byte* c, byte* bc);
        static abstract Vector512<uint> Store(Vector512<float> lo, Vector512<float> hi, byte* c, byte* bc);
        static abstract uint Store(float v, byte* c, byte* bc);
        static abstract Vector256<uint> Worse(Vector256<uint> a, Vector256<uint> b);
        static abstract Vector512<uint> Worse(Vector512<uint> a, Vector512<uint> b);
        static abstract bool NonFinite(Vector256<uint> check);
        static abstract bool NonFinite(Vector512<uint> check);
        static abstract bool NonFinite1(uint check);
    }

    private struct Epilogue<TB, TO> : IEpilogue where TB : struct, IBaseRead where TO : struct, IOutWrite
    {
        public static int OutSize => TO.Size;
        public static int BaseSize => TB.Size;
        public static bool InRegisters
        {
            [MethodImpl(MethodImplOptions.AggressiveInlining)]
            get => typeof(TO) == typeof(F32Out) && typeof(TB) != typeof(Bf16Base);
        }

        public static bool Checks => TO.Checks;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<uint> Worse(Vector256<uint> a, Vector256<uint> b) => TO.Worse(a, b);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<uint> Worse(Vector512<uint> a, Vector512<uint> b) => TO.Worse(a, b);
        public static bool NonFinite(Vector256<uint> check) => TO.NonFinite(check);
        public static bool NonFinite(Vector512<uint> check) => TO.NonFinite(check);
        public static bool NonFinite1(uint check) => TO.NonFinite1(check);

        // Every base load of a row precedes its store, so bc == c (in-place) reads the old values.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<uint> Store(Vector256<float> lo, Vector256<float> hi, byte* c, byte* bc)
        {
            if (TB.Present)
            {
                lo += TB.Load(bc);
                hi += TB.Load(bc + Vector256<float>.Count * TB.Size);
            }
            return TO.Store(lo, hi, c);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<uint> Store(Vector512<float> lo, Vector512<float> hi, byte* c, byte* bc)
        {
            if (TB.Present)
            {
                lo += TB.Load512(bc);
                hi += TB.Load512(bc + Vector512<float>.Count * TB.Size);
            }
            return TO.Store(lo, hi, c);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static uint Store(float v, byte* c, byte* bc)
        {
            return TO.Store1(TB.Present ? v + TB.Load1(bc) : v, c);
        }
    }

    /// <summary>
    /// An MR × NR micro-kernel over <c>panels</c> consecutive packed A panels (K·NR floats each) and one
    /// packed B panel: acc[i, j] = Σ_k b[k·6 + i]·a[k·NR + j], row i handed to TE at c + i·ldc, bc + i·ldb
    /// (bytes); the next panel's tile sits NR elements to the right.
    /// </summary>
    private interface IMicroKernel
    {
        static abstract int NR { get; }
        static abstract void Run<TE>(float* a, float* b, int k, int panels, byte* c, nint ldc, byte* bc, nint ldb, float* init, nint ldi, int* flag) where TE : struct, IEpilogue;
    }

    private struct Kernel256 : IMicroKernel
    {
        public static int NR => 16;

        [SkipLocalsInit, MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static void Run<TE>(float* a, float* b, int k, int panels, byte* c, nint ldc, byte* bc, nint ldb, float* init, nint ldi, int* flag) where TE : struct, IEpilogue
        {
            // Several panels per call: at K = 16 the call, the zeroing and the stores are a third of the work.
            for (; panels > 0; panels--, c += 16 * TE.OutSize, bc += 16 * TE.BaseSize)
            {
                // 12 accumulators + 2 A vectors + 1 broadcast = 15 of the 16 ymm registers; 12 FMAs per
                // 8 loads keeps both FMA pipes busy (4-cycle latency, 12 independent chains).
                Vector256<float> c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
                if (init == null)
                {
                    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = default;
                }
                else
                {
                    float* r = init;
                    c00 = Vector256.Load(r); c01 = Vector256.Load(r + 8); r += ldi;
                    c10 = Vector256.Load(r); c11 = Vector256.Load(r + 8); r += ldi;
                    c20 = Vector256.Load(r); c21 = Vector256.Load(r + 8); r += ldi;
                    c30 = Vector256.Load(r); c31 = Vector256.Load(r + 8); r += ldi;
                    c40 = Vector256.Load(r); c41 = Vector256.Load(r + 8); r += ldi;
                    c50 = Vector256.Load(r); c51 = Vector256.Load(r + 8);
                    init += 16;
                }
                float* bk = b;
                for (int kk = k; kk > 0; kk--, a += 16, bk += MR)
                {
                    var a0 = Vector256.Load(a);
                    var a1 = Vector256.Load(a + 8);
                    var w = Vector256.Create(bk[0]);
                    c00 = Vector256.FusedMultiplyAdd(a0, w, c00); c01 = Vector256.FusedMultiplyAdd(a1, w, c01);
                    w = Vector256.Create(bk[1]);
                    c10 = Vector256.FusedMultiplyAdd(a0, w, c10); c11 = Vector256.FusedMultiplyAdd(a1, w, c11);
                    w = Vector256.Create(bk[2]);
                    c20 = Vector256.FusedMultiplyAdd(a0, w, c20); c21 = Vector256.FusedMultiplyAdd(a1, w, c21);
                    w = Vector256.Create(bk[3]);
                    c30 = Vector256.FusedMultiplyAdd(a0, w, c30); c31 = Vector256.FusedMultiplyAdd(a1, w, c31);
                    w = Vector256.Create(bk[4]);
                    c40 = Vector256.FusedMultiplyAdd(a0, w, c40); c41 = Vector256.FusedMultiplyAdd(a1, w, c41);
                    w = Vector256.Create(bk[5]);
                    c50 = Vector256.FusedMultiplyAdd(a0, w, c50); c51 = Vector256.FusedMultiplyAdd(a1, w, c51);
                }
                byte* cr = c, br = bc;
                var s0 = TE.Store(c00, c01, cr, br); cr += ldc; br += ldb;
                var s1 = TE.Store(c10, c11, cr, br); cr += ldc; br += ldb;
                var s2 = TE.Store(c20, c21, cr, br); cr += ldc; br += ldb;
                var s3 = TE.Store(c30, c31, cr, br); cr += ldc; br += ldb;
                var s4 = TE.Store(c40, c41, cr, br); cr += ldc; br += ldb;
                var s5 = TE.Store(c50, c51, cr, br);
                if (TE.Checks && flag != null && TE.NonFinite(TE.Worse(TE.Worse(TE.Worse(s0, s1), TE.Worse(s2, s3)), TE.Worse(s4, s5))))
                    Volatile.Write(ref *flag, 1);
            }
        }
    }

    private struct Kernel512 : IMicroKernel
    {
        public static int NR => 64;

        // 6 × 64: 24 zmm accumulators of the 32, four A loads and six broadcasts per 24 FMAs (6 × 32 had
        // 8 loads per 12 FMAs and left 20 registers idle).
        [SkipLocalsInit, MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public static void Run<TE>(float* a, float* b, int k, int panels, byte* c, nint ldc, byte* bc, nint ldb, float* init, nint ldi, int* flag) where TE : struct, IEpilogue
        {
            // Several panels per call: at K = 16 the call, the zeroing and the stores are a third of the work.
            for (; panels > 0; panels--, c += 64 * TE.OutSize, bc += 64 * TE.BaseSize)
            {
                Vector512<float> c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23,
                    c30, c31, c32, c33, c40, c41, c42, c43, c50, c51, c52, c53;
                if (init == null)
                {
                    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = c20 = c21 = c22 = c23 = default;
                    c30 = c31 = c32 = c33 = c40 = c41 = c42 = c43 = c50 = c51 = c52 = c53 = default;
                }
                else
                {
                    float* r = init;
                    c00 = Vector512.Load(r); c01 = Vector512.Load(r + 16); c02 = Vector512.Load(r + 32); c03 = Vector512.Load(r + 48); r += ldi;
                    c10 = Vector512.Load(r); c11 = Vector512.Load(r + 16); c12 = Vector512.Load(r + 32); c13 = Vector512.Load(r + 48); r += ldi;
                    c20 = Vector512.Load(r); c21 = Vector512.Load(r + 16); c22 = Vector512.Load(r + 32); c23 = Vector512.Load(r + 48); r += ldi;
                    c30 = Vector512.Load(r); c31 = Vector512.Load(r + 16); c32 = Vector512.Load(r + 32); c33 = Vector512.Load(r + 48); r += ldi;
                    c40 = Vector512.Load(r); c41 = Vector512.Load(r + 16); c42 = Vector512.Load(r + 32); c43 = Vector512.Load(r + 48); r += ldi;
                    c50 = Vector512.Load(r); c51 = Vector512.Load(r + 16); c52 = Vector512.Load(r + 32); c53 = Vector512.Load(r + 48);
                    init += 64;
                }
                float* bk = b;
                for (int kk = k; kk > 0; kk--, a += 64, bk += MR)
                {
                    var a0 = Vector512.Load(a);
                    var a1 = Vector512.Load(a + 16);
                    var a2 = Vector512.Load(a + 32);
                    var a3 = Vector512.Load(a + 48);
                    var w = Vector512.Create(bk[0]);
                    c00 = Vector512.FusedMultiplyAdd(a0, w, c00); c01 = Vector512.FusedMultiplyAdd(a1, w, c01);
                    c02 = Vector512.FusedMultiplyAdd(a2, w, c02); c03 = Vector512.FusedMultiplyAdd(a3, w, c03);
                    w = Vector512.Create(bk[1]);
                    c10 = Vector512.FusedMultiplyAdd(a0, w, c10); c11 = Vector512.FusedMultiplyAdd(a1, w, c11);
                    c12 = Vector512.FusedMultiplyAdd(a2, w, c12); c13 = Vector512.FusedMultiplyAdd(a3, w, c13);
                    w = Vector512.Create(bk[2]);
                    c20 = Vector512.FusedMultiplyAdd(a0, w, c20); c21 = Vector512.FusedMultiplyAdd(a1, w, c21);
                    c22 = Vector512.FusedMultiplyAdd(a2, w, c22); c23 = Vector512.FusedMultiplyAdd(a3, w, c23);
                    w = Vector512.Create(bk[3]);
                    c30 = Vector512.FusedMultiplyAdd(a0, w, c30); c31 = Vector512.FusedMultiplyAdd(a1, w, c31);
                    c32 = Vector512.FusedMultiplyAdd(a2, w, c32); c33 = Vector512.FusedMultiplyAdd(a3, w, c33);
                    w = Vector512.Create(bk[4]);
                    c40 = Vector512.FusedMultiplyAdd(a0, w, c40); c41 = Vector512.FusedMultiplyAdd(a1, w, c41);
                    c42 = Vector512.FusedMultiplyAdd(a2, w, c42); c43 = Vector512.FusedMultiplyAdd(a3, w, c43);
                    w = Vector512.Create(bk[5]);
                    c50 = Vector512.FusedMultiplyAdd(a0, w, c50); c51 = Vector512.FusedMultiplyAdd(a1, w, c51);
                    c52 = Vector512.FusedMultiplyAdd(a2, w, c52); c53 = Vector512.FusedMultiplyAdd(a3, w, c53);
                }
                byte* cr = c, br = bc;
                nint half = 32 * TE.OutSize, bhalf = 32 * TE.BaseSize;
                var s0 = TE.Worse(TE.Store(c00, c01, cr, br), TE.Store(c02, c03, cr + half, br + bhalf)); cr += ldc; br += ldb;
                var s1 = TE.Worse(TE.Store(c10, c11, cr, br), TE.Store(c12, c13, cr + half, br + bhalf)); cr += ldc; br += ldb;
                var s2 = TE.Worse(TE.Store(c20, c21, cr, br), TE.Store(c22, c23, cr + half, br + bhalf)); cr += ldc; br += ldb;
                var s3 = TE.Worse(TE.Store(c30, c31, cr, br), TE.Store(c32, c33, cr + half, br + bhalf)); cr += ldc; br += ldb;
                var s4 = TE.Worse(TE.Store(c40, c41, cr, br), TE.Store(c42, c43, cr + half, br + bhalf)); cr += ldc; br += ldb;
                var s5 = TE.Worse(TE.Store(c50, c51, cr, br), TE.Store(c52, c53, cr + half, br + bhalf));
                if (TE.Checks && flag != null && TE.NonFinite(TE.Worse(TE.Worse(TE.Worse(s0, s1), TE.Worse(s2, s3)), TE.Worse(s4, s5))))
                    Volatile.Write(ref *flag, 1);
            }
        }
    }

    private struct KernelScalar : IMicroKernel
    {
        public static int NR => 16;

        [SkipLocalsInit]
        public static void Run<TE>(float* a, float* b, int k, int panels, byte* c, nint ldc, byte* bc, nint ldb, float* init, nint ldi, int* flag) where TE : struct, IEpilogue
        {
            float* acc = stackalloc float[MR * 16];
            for (; panels > 0; panels--, c += 16 * TE.OutSize, bc += 16 * TE.BaseSize)
            {
                for (int i = 0; i < MR; i++)
                    for (int j = 0; j < 16; j++) acc[i * 16 + j] = init == null ? 0f : init[i * ldi + j];
                if (init != null) init += 16;
                float* bk = b;
                for (int kk = k; kk > 0; kk--, a += 16, bk += MR)
                    for (int i = 0; i < MR; i++)
                    {
                        float w = bk[i];
                        for (int j = 0; j < 16; j++) acc[i * 16 + j] = MathF.FusedMultiplyAdd(a[j], w, acc[i * 16 + j]);
                    }
                byte* cr = c, br = bc;
                uint seen = 0;
                for (int i = 0; i < MR; i++, cr += ldc, br += ldb)
                    for (int j = 0; j < 16; j++)
                        seen = Math.Max(seen, TE.Store(acc[i * 16 + j], cr + j * TE.OutSize, br + j * TE.BaseSize));
                if (TE.Checks && flag != null && TE.NonFinite1(seen)) Volatile.Write(ref *flag, 1);
            }
        }
    }
}
