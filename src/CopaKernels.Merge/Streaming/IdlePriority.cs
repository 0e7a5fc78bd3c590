using System.Runtime.InteropServices;

namespace CopaKernels.Merge.Streaming;

/// <summary>
/// Work that must not slow the merge: the calling thread drops to the lowest priority the system has. On
/// Linux that is the SCHED_IDLE policy (sched(7)), which the scheduler runs only on a core no other thread
/// wants, so the merge's threads take a core back from it at once; a nice value, even 19, still takes a share
/// of a busy core. Elsewhere the thread takes <see cref="ThreadPriority.Lowest"/>.
/// </summary>
internal static unsafe partial class IdlePriority
{
    private const int SchedIdle = 5;
    private const int ClockThreadCpuTime = 3;

    /// <summary>Moves the calling thread to idle priority; where the system refuses, it stays as it was.</summary>
    public static void LowerCurrentThread()
    {
        if (OperatingSystem.IsLinux())
        {
            try
            {
                int priority = 0;   // struct sched_param { int sched_priority; }: 0 for SCHED_IDLE
                if (sched_setscheduler(0, SchedIdle, &priority) == 0) return;
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        }
        try { Thread.CurrentThread.Priority = ThreadPriority.Lowest; }
        catch (Exception e) when (e is PlatformNotSupportedException or ThreadStateException) { }
    }

    /// <summary>
    /// CPU time the calling thread has used (Linux, CLOCK_THREAD_CPUTIME_ID); null elsewhere. An idle-priority
    /// thread's wall time counts the time it waited for a core, so its work is measured by this instead.
    /// </summary>
    public static TimeSpan? ThreadCpuTime()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            long* ts = stackalloc long[2];   // struct timespec { time_t tv_sec; long tv_nsec; } on 64-bit Linux
            if (IntPtr.Size != 8 || clock_gettime(ClockThreadCpuTime, ts) != 0) return null;
            return TimeSpan.FromTicks(ts[0] * TimeSpan.TicksPerSecond + ts[1] / 100);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return null;
        }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int sched_setscheduler(int pid, int policy, int* param);

    [LibraryImport("libc")]
    private static partial int clock_gettime(int clock, long* timespec);
}
