using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;
using ILGPU.Runtime;
using ILGPU;

namespace CopaKernels.Gpu;

/// <summary>
/// Families 3 and 4 on ILGPU: one row tile of Σ_n B_n·diag(Factor_n·Scale_n)·A_n + base as a single
/// shared-memory tiled GEMM over the concatenated inner dimension K = Σ r_n; the output is written once.
/// </summary>
/// <remarks>
/// <para>Packing. The terms may live in different buffers, and a kernel takes a fixed list of views, so the
/// rows of the tile of every B_n are packed into one RowCount × K panel, each column already multiplied by
/// c[k] = Factor_n·Scale_n[k] (one fp32 multiply, then B·c another: the CPU backend's numerics), and the A_n
/// are copied device-to-device into one K × d_in panel (skipped when there is one term). Both panels are
/// small next to the output tile (K ≪ RowCount, d_in).</para>
/// <para>GEMM. A group of T×T threads computes a 4T × 4T output tile, each thread a 4 × 4 micro-tile of
/// rows ty + iT and columns tx + jT (so a row of threads stores consecutive columns), over K slabs of 8
/// staged in shared memory. Every output element is one fp32 chain acc += b·a over k ascending from +0:
/// the CPU order, though the CPU fuses each multiply-add and ILGPU may not, so results agree within fp32
/// rounding rather than bit for bit. T is a launch parameter (16 on GPUs: 256 threads, 64 × 64 tiles; 4
/// on ILGPU's CPU emulator, whose groups are OS threads).</para>
/// <para>Epilogue. The base element is widened exactly, added once, and the fp32 result rounded once with
/// integer bit operations: BF16 nearest-even with NaN → 0x7FC0 (FloatConversion.SingleToBf16), F16
/// nearest-even with overflow to ±Inf, subnormals, and NaN → quiet NaN keeping the top payload bits (what
/// System.Half and TensorPrimitives.ConvertToHalf produce). An in-place base (the output region itself) is
/// read by the thread that then writes the same element.</para>
/// </remarks>
internal sealed class LowRankProduct : IDisposable
{
    /// <summary>Inner-dimension slab staged in shared memory per step.</summary>
    private const int Slab = 8;

    /// <summary>Largest tile side (4 × 16 threads).</summary>
    private const int MaxTile = 64;

    private const int TypeNone = -1, TypeF32 = 0, TypeBf16 = 1, TypeF16 = 2;

    private readonly IlgpuBackend _backend;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, int, ArrayView<float>, int, float, ArrayView<float>, int, int> _packB;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, int, int, int, int,
        ArrayView<float>, ArrayView<ushort>, int, ArrayView<float>, ArrayView<ushort>, int, ArrayView<float>, int> _gemm;
    private MemoryBuffer1D<float, Stride1D.Dense>? _bPanel, _aPanel;
    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>, ArrayView<float>, int>? _exact;

    public LowRankProduct(IlgpuBackend backend)
    {
        _backend = backend;
        var acc = backend.Accelerator;
        _packB = acc.LoadAutoGroupedKernel<Index1D, ArrayView<float>, int, ArrayView<float>, int, float, ArrayView<float>, int, int>(PackBKernel);
        _gemm = acc.LoadKernel<ArrayView<float>, ArrayView<float>, int, int, int, int,
            ArrayView<float>, ArrayView<ushort>, int, ArrayView<float>, ArrayView<ushort>, int, ArrayView<float>, int>(GemmKernel);
    }

    public void Run(ReadOnlySpan<LowRankTerm> terms, long dOut, long dIn, in ProductTile tile)
    {
        if (tile.RowCount == 0 || dIn == 0) return;
        long kTotal = 0;
        foreach (var t in terms) kTotal += t.Rank;
        if (dIn > int.MaxValue || kTotal * dIn > int.MaxValue || (long)tile.RowCount * kTotal > int.MaxValue || (long)tile.RowCount * dIn > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(tile), $"tile {tile.RowCount} × {dIn} with Σr = {kTotal} is too large for one ILGPU launch; use smaller row tiles");
        int m = tile.RowCount, n = (int)dIn, k = (int)kTotal;
        var stream = _backend.Stream;
        var bPanel = Panel(ref _bPanel, Math.Max(1L, (long)m * k));
        ArrayView<float> aPanel;
        if (terms.Length == 1 && k > 0) aPanel = ((IlgpuBuffer)terms[0].A).Floats.SubView(terms[0].AOffset, (long)k * n);
        else aPanel = Panel(ref _aPanel, Math.Max(1L, (long)k * n));
        int k0 = 0;
        foreach (var t in terms)
        {
            if (t.Rank == 0) continue;
            var b = ((IlgpuBuffer)t.B).Floats.SubView(t.BOffset + tile.RowStart * t.Rank, (long)m * t.Rank);
            var scale = t.Scale != null ? ((IlgpuBuffer)t.Scale).Floats.SubView(t.ScaleOffset, t.Rank) : b;
            _packB(stream, m * t.Rank, b, t.Rank, scale, t.Scale != null ? 1 : 0, t.Factor, bPanel, k, k0);
            if (terms.Length != 1)
                ((IlgpuBuffer)t.A).Floats.SubView(t.AOffset, (long)t.Rank * n).CopyTo(stream, aPanel.SubView((long)k0 * n, (long)t.Rank * n));
            k0 += t.Rank;
        }

        var output = (IlgpuBuffer)tile.Output;
        long count = (long)m * n;
        // The flag word as a float view (any non-zero bits raise it); without a flag, any view and 0.
        var flag = tile.NonFiniteFlag is IlgpuBuffer fb ? fb.Floats.SubView(tile.NonFiniteFlagOffset / 4, 1) : bPanel;
        int hasFlag = tile.NonFiniteFlag != null ? 1 : 0;
        if (tile.BitExact)
        {
            // Loaded on first use: it needs fp64, which the fp32 product and a device without it do not.
            _exact ??= LoadExact();
            _exact(stream, (int)count, bPanel, aPanel, n, k, output.Floats.SubView(tile.OutputOffset, count), flag, hasFlag);
            return;
        }
        int outType = Code(tile.OutputType);
        ArrayView<float> outF = outType == TypeF32 ? output.Floats.SubView(tile.OutputOffset, count) : output.Floats;
        ArrayView<ushort> outH = outType != TypeF32 ? output.Halves.SubView(tile.OutputOffset, count) : output.Halves;
        int baseType = TypeNone;
        ArrayView<float> baseF = outF;
        ArrayView<ushort> baseH = outH;
        if (tile.Base is IlgpuBuffer bb)
        {
            baseType = Code(tile.BaseType);
            if (baseType == TypeF32) baseF = bb.Floats.SubView(tile.BaseOffset, count);
            else baseH = bb.Halves.SubView(tile.BaseOffset, count);
        }
        int side = _backend.TileThreads, tileRows = 4 * side;
        int tilesM = (m + tileRows - 1) / tileRows, tilesN = (n + tileRows - 1) / tileRows;
        _gemm(stream, new KernelConfig(tilesM * tilesN, side * side), bPanel, aPanel, m, n, k, side,
            outF, outH, outType, baseF, baseH, baseType, flag, hasFlag);
    }

    private Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>, ArrayView<float>, int> LoadExact()
    {
        if (_backend.Accelerator.Capabilities is ILGPU.Runtime.OpenCL.CLCapabilityContext { Float64: false })
            throw new NotSupportedException($"{_backend.Name}: the device has no fp64, which the bit-exact product (delta-space merges) needs; use `device` cpu");
        return _backend.Accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, int, int, ArrayView<float>, ArrayView<float>, int>(ExactKernel);
    }

    private static int Code(DType t) => t switch { DType.F32 => TypeF32, DType.BF16 => TypeBf16, _ => TypeF16 };

    private ArrayView<float> Panel(ref MemoryBuffer1D<float, Stride1D.Dense>? buffer, long length)
    {
        if (buffer == null || buffer.Length < length)
        {
            // The stream is in order, so the old panel is no longer read once the new one is in use;
            // synchronise anyway before freeing memory a queued kernel may still name.
            _backend.Synchronize();
            buffer?.Dispose();
            buffer = _backend.Accelerator.Allocate1D<float>(Math.Max(length, 1 << 12));
        }
        return buffer.View.SubView(0, length);
    }

    /// <summary>panel[i, k0 + j] = b[i, j] · (factor · scale[j]) for the rows of the tile (scale absent: factor).</summary>
    [GpuKernel(KernelGrouping.Implicit)]
    internal static void PackBKernel(Index1D index, ArrayView<float> b, int rank, ArrayView<float> scale, int hasScale, float factor,
        ArrayView<float> panel, int kTotal, int k0)
    {
        int i = index / rank, j = index - i * rank;
        float coef = hasScale != 0 ? factor * scale[j] : factor;
        panel[(long)i * kTotal + k0 + j] = b[index] * coef;
    }

    /// <summary>
    /// The bit-exact product (ProductTile.BitExact), one thread per output element: Σ_k b'[i,k]·a[k,j] in
    /// double over k ascending from +0 (each product exact in double, so a fused multiply-add rounds the
    /// same), rounded once to fp32. The CPU backend returns the same bits. A non-finite result raises the
    /// flag (<paramref name="hasFlag"/>): every writer writes the same value, so the race is harmless.
    /// </summary>
    [GpuKernel(KernelGrouping.Implicit)]
    internal static void ExactKernel(Index1D index, ArrayView<float> b, ArrayView<float> a, int n, int kTotal, ArrayView<float> output,
        ArrayView<float> flag, int hasFlag)
    {
        int i = index / n, j = index - i * n;
        double acc = 0;
        for (int k = 0; k < kTotal; k++) acc += (double)b[(long)i * kTotal + k] * a[(long)k * n + j];
        float v = (float)acc;
        output[index] = v;
        if (hasFlag != 0 && (Interop.FloatAsInt(v) & NonFinite.F32Magnitude) >= NonFinite.F32Infinity) flag[0] = 1f;
    }

    /// <summary>
    /// One 4T × 4T output tile per group of T × T threads: out = b·a (+ base), rounded once to the output
    /// type. A thread that stored a NaN or ±Inf raises the flag once, at the end (<paramref name="hasFlag"/>):
    /// every writer writes the same value, so the race is harmless, and no other thread waits for it.
    /// </summary>
    [GpuKernel(KernelGrouping.Explicit)]
    internal static void GemmKernel(ArrayView<float> b, ArrayView<float> a, int m, int n, int kTotal, int side,
        ArrayView<float> outF, ArrayView<ushort> outH, int outType, ArrayView<float> baseF, ArrayView<ushort> baseH, int baseType,
        ArrayView<float> flag, int hasFlag)
    {
        var bs = SharedMemory.Allocate<float>(Slab * MaxTile);
        var @as = SharedMemory.Allocate<float>(Slab * MaxTile);
        int tid = Group.IdxX, threads = side * side, tileSide = 4 * side;
        int tilesN = (n + tileSide - 1) / tileSide;
        int row0 = Grid.IdxX / tilesN * tileSide, col0 = Grid.IdxX % tilesN * tileSide;
        int tx = tid % side, ty = tid / side;
        float c00 = 0f, c01 = 0f, c02 = 0f, c03 = 0f, c10 = 0f, c11 = 0f, c12 = 0f, c13 = 0f;
        float c20 = 0f, c21 = 0f, c22 = 0f, c23 = 0f, c30 = 0f, c31 = 0f, c32 = 0f, c33 = 0f;
        for (int k0 = 0; k0 < kTotal; k0 += Slab)
        {
            for (int l = tid; l < Slab * tileSide; l += threads)
            {
                // B panel rows are k-contiguous, A panel rows are column-contiguous: each load walks memory in order.
                int bi = l / Slab, bk = l - bi * Slab;
                int gr = row0 + bi, gk = k0 + bk;
                bs[bk * MaxTile + bi] = gr < m && gk < kTotal ? b[(long)gr * kTotal + gk] : 0f;
                int ak = l / tileSide, aj = l - ak * tileSide;
                int gc = col0 + aj, gk2 = k0 + ak;
                @as[ak * MaxTile + aj] = gc < n && gk2 < kTotal ? a[(long)gk2 * n + gc] : 0f;
            }
            Group.Barrier();
            int steps = kTotal - k0 < Slab ? kTotal - k0 : Slab;
            for (int kk = 0; kk < steps; kk++)
            {
                int o = kk * MaxTile;
                float b0 = bs[o + ty], b1 = bs[o + ty + side], b2 = bs[o + ty + 2 * side], b3 = bs[o + ty + 3 * side];
                float a0 = @as[o + tx], a1 = @as[o + tx + side], a2 = @as[o + tx + 2 * side], a3 = @as[o + tx + 3 * side];
                c00 += b0 * a0; c01 += b0 * a1; c02 += b0 * a2; c03 += b0 * a3;
                c10 += b1 * a0; c11 += b1 * a1; c12 += b1 * a2; c13 += b1 * a3;
                c20 += b2 * a0; c21 += b2 * a1; c22 += b2 * a2; c23 += b2 * a3;
                c30 += b3 * a0; c31 += b3 * a1; c32 += b3 * a2; c33 += b3 * a3;
            }
            Group.Barrier();
        }
        int r = row0 + ty, c = col0 + tx;
        int bad = 0;
        bad |= Store(c00, r, c, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c01, r, c + side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c02, r, c + 2 * side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c03, r, c + 3 * side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c10, r + side, c, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c11, r + side, c + side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c12, r + side, c + 2 * side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c13, r + side, c + 3 * side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c20, r + 2 * side, c, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c21, r + 2 * side, c + side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c22, r + 2 * side, c + 2 * side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c23, r + 2 * side, c + 3 * side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c30, r + 3 * side, c, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c31, r + 3 * side, c + side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c32, r + 3 * side, c + 2 * side, m, n, outF, outH, outType, baseF, baseH, baseType);
        bad |= Store(c33, r + 3 * side, c + 3 * side, m, n, outF, outH, outType, baseF, baseH, baseType);
        if (bad != 0 && hasFlag != 0) flag[0] = 1f;
    }

    /// <summary>Stores one element; returns 1 when what was stored is NaN or ±Inf in the output type (its exponent all ones).</summary>
    private static int Store(float v, int row, int col, int m, int n, ArrayView<float> outF, ArrayView<ushort> outH, int outType,
        ArrayView<float> baseF, ArrayView<ushort> baseH, int baseType)
    {
        if (row >= m || col >= n) return 0;
        long e = (long)row * n + col;
        if (baseType == TypeF32) v += baseF[e];
        else if (baseType == TypeBf16) v += Interop.IntAsFloat((uint)baseH[e] << 16);
        else if (baseType == TypeF16) v += HalfToSingle(baseH[e]);
        if (outType == TypeF32)
        {
            outF[e] = v;
            return (Interop.FloatAsInt(v) & NonFinite.F32Magnitude) >= NonFinite.F32Infinity ? 1 : 0;
        }
        ushort h = outType == TypeBf16 ? SingleToBf16(v) : SingleToHalf(v);
        outH[e] = h;
        return (h & NonFinite.Half16Magnitude) >= (outType == TypeBf16 ? NonFinite.Bf16Infinity : NonFinite.F16Infinity) ? 1 : 0;
    }

    /// <summary>FloatConversion.SingleToBf16: nearest-even on the dropped 16 bits, every NaN → 0x7FC0.</summary>
    internal static ushort SingleToBf16(float value)
    {
        uint u = Interop.FloatAsInt(value);
        if ((u & 0x7FFF_FFFFu) > 0x7F80_0000u) return 0x7FC0;
        return (ushort)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }

    /// <summary>F32 → F16 bits, round to nearest-even (System.Half's conversion), in integer operations only.</summary>
    internal static ushort SingleToHalf(float value)
    {
        uint u = Interop.FloatAsInt(value);
        uint sign = (u >> 16) & 0x8000u;
        uint a = u & 0x7FFF_FFFFu;
        if (a > 0x7F80_0000u) return (ushort)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
        // From 65520 up (halfway between 65504 and 2^16) nearest-even rounds to Inf.
        if (a >= 0x477F_F000u) return (ushort)(sign | 0x7C00u);
        if (a >= 0x3880_0000u)
        {
            // Normal half: rebias the exponent (127 → 15) and round the 13 dropped mantissa bits to even.
            uint r = a - 0x3800_0000u;
            return (ushort)(sign | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13));
        }
        // At or below 2^-25 (half the smallest subnormal, a tie that goes to the even 0): ±0.
        if (a <= 0x3300_0000u) return (ushort)sign;
        // Subnormal half: the value in units of 2^-24 is the 24-bit significand shifted right by 126 − e.
        int shift = 126 - (int)(a >> 23);
        uint sig = (a & 0x7F_FFFFu) | 0x80_0000u;
        uint q = sig >> shift;
        uint rem = sig & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u) != 0)) q++;
        return (ushort)(sign | q);
    }

    /// <summary>F16 bits → F32, exact (NaN keeps its payload and becomes quiet, as System.Half's conversion).</summary>
    internal static float HalfToSingle(ushort h)
    {
        uint sign = ((uint)h & 0x8000u) << 16;
        uint e = ((uint)h >> 10) & 0x1Fu, f = (uint)h & 0x3FFu;
        if (e == 0x1F) return Interop.IntAsFloat(sign | 0x7F80_0000u | (f != 0 ? 0x40_0000u : 0u) | (f << 13));
        if (e != 0) return Interop.IntAsFloat(sign | ((e + 112u) << 23) | (f << 13));
        // Zero or subnormal: f · 2^-24 is exact in fp32.
        float v = f * 5.9604644775390625e-8f;
        return Interop.IntAsFloat(Interop.FloatAsInt(v) | sign);
    }

    public void Dispose()
    {
        _bPanel?.Dispose();
        _aPanel?.Dispose();
    }
}
