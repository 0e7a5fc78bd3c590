using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace CopaKernels.Formats;

/// <summary>
/// The few POSIX calls .NET has no API for: taking an advisory lock and knowing whether it was taken.
/// Each says when it cannot answer instead of guessing.
/// </summary>
internal static partial class Posix
{
    /// <summary>What <see cref="TryLock"/> found.</summary>
    public enum LockResult
    {
        /// <summary>This open file holds the exclusive lock.</summary>
        Held,
        /// <summary>Another open file (of this process or another) holds it.</summary>
        Busy,
        /// <summary>The file system (or platform) gives no such lock.</summary>
        Unsupported,
    }

    private const int LockEx = 2, LockNb = 4;

    /// <summary>
    /// Takes <c>flock(LOCK_EX | LOCK_NB)</c> on <paramref name="file"/>, or confirms that it is held. On
    /// Unix, opening a <see cref="FileStream"/> with <see cref="FileShare.None"/> already asks for this
    /// lock (SafeFileHandle.Unix.cs, <c>Init</c>) but carries on without it, silently, where the file
    /// system refuses it or <c>DOTNET_SYSTEM_IO_DISABLEFILELOCKING</c> is set; a caller that deletes
    /// what an unlocked file guards must know. flock locks belong to the open file description, so a
    /// second open of the same file conflicts within one process too; they end when the process does,
    /// however it ends (kill -9 included). On Windows the <see cref="FileShare.None"/> open is itself
    /// the lock.
    /// </summary>
    public static LockResult TryLock(SafeFileHandle file)
    {
        if (OperatingSystem.IsWindows()) return LockResult.Held;
        bool added = false;
        try
        {
            file.DangerousAddRef(ref added);
            if (flock((int)file.DangerousGetHandle(), LockEx | LockNb) == 0) return LockResult.Held;
            int wouldBlock = OperatingSystem.IsLinux() ? 11 : 35; // EWOULDBLOCK: Linux / BSD and macOS
            return Marshal.GetLastPInvokeError() == wouldBlock ? LockResult.Busy : LockResult.Unsupported;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return LockResult.Unsupported;
        }
        finally
        {
            if (added) file.DangerousRelease();
        }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int flock(int fd, int operation);
}
