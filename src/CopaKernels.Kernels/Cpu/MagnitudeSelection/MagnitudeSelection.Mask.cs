using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace CopaKernels.Kernels.Cpu;

// Family 1 on the CPU: the keep-mask and the largest key (the Inf/NaN check).
// One concern of the partial class; its design and entry points are in MagnitudeSelection.cs.
internal static unsafe partial class MagnitudeSelection
{
    /// <summary>Zeroes every entry with key &lt; t (writing +0) and returns how many were kept.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static long Mask(float* p, long n, uint t)
    {
        long kept = 0, i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var abs = Vector512.Create((int)MagnitudeKey.F32Mask);
            var vt = Vector512.Create((int)t);
            for (; i <= n - 16; i += 16)
            {
                var v = Vector512.Load((int*)(p + i));
                var keep = Vector512.GreaterThanOrEqual(v & abs, vt);
                (v & keep).Store((int*)(p + i));
                kept += BitOperations.PopCount(keep.ExtractMostSignificantBits());
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var abs = Vector256.Create((int)MagnitudeKey.F32Mask);
            var vt = Vector256.Create((int)t);
            for (; i <= n - 8; i += 8)
            {
                var v = Vector256.Load((int*)(p + i));
                var keep = Vector256.GreaterThanOrEqual(v & abs, vt);
                (v & keep).Store((int*)(p + i));
                kept += BitOperations.PopCount(keep.ExtractMostSignificantBits());
            }
        }
        for (; i < n; i++)
        {
            uint key = ((uint*)p)[i] & MagnitudeKey.F32Mask;
            if (key >= t) kept++;
            else p[i] = 0f;
        }
        return kept;
    }

    private static long ParallelMask(CpuBackend backend, float* p, long n, uint t)
    {
        var pp = (nint)p;
        return ForEachChunk(backend, n, (start, len) => Mask((float*)pp + start, len, t)).Sum();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static uint MaxKey(uint* bits, long n)
    {
        long i = 0;
        uint mx = 0;
        if (Vector512.IsHardwareAccelerated && n >= 64)
        {
            var abs = Vector512.Create(MagnitudeKey.F32Mask);
            Vector512<uint> m0 = default, m1 = default, m2 = default, m3 = default;
            for (; i <= n - 64; i += 64)
            {
                m0 = Vector512.Max(m0, Vector512.Load(bits + i) & abs);
                m1 = Vector512.Max(m1, Vector512.Load(bits + i + 16) & abs);
                m2 = Vector512.Max(m2, Vector512.Load(bits + i + 32) & abs);
                m3 = Vector512.Max(m3, Vector512.Load(bits + i + 48) & abs);
            }
            var m8 = Vector512.Max(Vector512.Max(m0, m1), Vector512.Max(m2, m3));
            var m4 = Vector256.Max(m8.GetLower(), m8.GetUpper());
            for (int l = 0; l < 8; l++) mx = Math.Max(mx, m4.GetElement(l));
        }
        if (Vector256.IsHardwareAccelerated && n - i >= 8)
        {
            var abs = Vector256.Create(MagnitudeKey.F32Mask);
            var vmax = Vector256<uint>.Zero;
            for (; i <= n - 8; i += 8) vmax = Vector256.Max(vmax, Vector256.Load(bits + i) & abs);
            for (int l = 0; l < 8; l++) mx = Math.Max(mx, vmax.GetElement(l));
        }
        for (; i < n; i++) mx = Math.Max(mx, bits[i] & MagnitudeKey.F32Mask);
        return mx;
    }

    private static uint ParallelMaxKey(CpuBackend backend, uint* bits, long n)
    {
        var b = (nint)bits;
        return ForEachChunk(backend, n, (start, len) => MaxKey((uint*)b + start, len)).Max();
    }
}
