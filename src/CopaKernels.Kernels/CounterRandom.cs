using System.Runtime.CompilerServices;
using System.Text;

namespace CopaKernels.Kernels;

/// <summary>
/// The counter-based random stream of DARE (SEMANTICS §4): the keep decision for element i of task t of
/// tensor "name" under seed s is a pure function of (s, name, t, i), so every backend, thread count
/// and tiling draws the same mask. Built from SplitMix64's finaliser (integer multiply, xor, shift:
/// the same on CPU, CUDA and OpenCL); the comparison is done on 24-bit integers, so no floating-point
/// rounding can differ between devices.
/// </summary>
public static class CounterRandom
{
    /// <summary>Resolution of the uniform draws: 2^24 levels.</summary>
    public const int Bits = 24;

    /// <summary>SplitMix64 finaliser (Stafford's variant 13): a bijection on 64-bit integers with full avalanche.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>The stream key of one (seed, tensor, task): FNV-1a over the UTF-8 name, then mixed with seed and task.</summary>
    public static ulong StreamKey(ulong seed, string tensorName, int task)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (var b in Encoding.UTF8.GetBytes(tensorName))
        {
            h ^= b;
            h *= 0x100000001B3UL;
        }
        return Mix(Mix(seed + 0x9E3779B97F4A7C15UL) ^ Mix(h) ^ Mix((ulong)task * 0xD1B54A32D192ED03UL + 1));
    }

    /// <summary>The keep threshold for density ρ: an element is kept when its draw is below it.</summary>
    public static uint KeepThreshold(double density)
    {
        SelectionResult.CheckDensity(density);
        return (uint)Math.Min(1L << Bits, (long)Math.Round(density * (1L << Bits)));
    }

    /// <summary>The 24-bit draw of element <paramref name="index"/> of a stream.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Draw(ulong streamKey, long index) =>
        (uint)(Mix(streamKey + (ulong)index * 0x9E3779B97F4A7C15UL) >> (64 - Bits));

    /// <summary>True when element <paramref name="index"/> survives DARE's drop at the given keep threshold.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool Keep(ulong streamKey, long index, uint keepThreshold) => Draw(streamKey, index) < keepThreshold;
}
