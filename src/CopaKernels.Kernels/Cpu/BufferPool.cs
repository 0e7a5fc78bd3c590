using System.Runtime.InteropServices;

namespace CopaKernels.Kernels.Cpu;

/// <summary>
/// Keeps freed native blocks for reuse by size. A merge allocates the same few sizes over and over
/// (one module's packed factors after another); fresh blocks of a few MB come from mmap and cost a
/// page fault per 4 KiB on first touch, more than the kernels that use them take. Reusing a block
/// costs one clear instead.
/// Bounded: at most <see cref="MaxIdleBytes"/> are kept idle, blocks above <see cref="MaxBlockBytes"/>
/// are never kept.
/// </summary>
internal static unsafe class BufferPool
{
    /// <summary>Most idle memory kept (part of the merge's fixed overhead).</summary>
    public const long MaxIdleBytes = 64L << 20;

    /// <summary>Largest block kept.</summary>
    public const long MaxBlockBytes = 16L << 20;

    private static readonly Dictionary<long, Stack<nint>> Idle = new();
    private static long s_idleBytes;

    public static void* Rent(long byteLength)
    {
        lock (Idle)
        {
            if (Idle.TryGetValue(byteLength, out var stack) && stack.Count > 0)
            {
                s_idleBytes -= byteLength;
                return (void*)stack.Pop();
            }
        }
        return NativeMemory.AlignedAlloc((nuint)Math.Max(byteLength, 64), 64);
    }

    public static void Return(void* p, long byteLength)
    {
        if (byteLength <= MaxBlockBytes && byteLength >= 4096)
            lock (Idle)
            {
                if (s_idleBytes + byteLength <= MaxIdleBytes)
                {
                    if (!Idle.TryGetValue(byteLength, out var stack)) Idle[byteLength] = stack = new Stack<nint>();
                    stack.Push((nint)p);
                    s_idleBytes += byteLength;
                    return;
                }
            }
        NativeMemory.AlignedFree(p);
    }
}
