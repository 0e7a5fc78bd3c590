using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace CopaKernels.Formats;

/// <summary>
/// The few POSIX calls .NET has no API for: taking an advisory lock and knowing whether it was taken,
/// and reading and setting a folder's owner. Each says when it cannot answer instead of guessing.
/// </summary>
internal static unsafe partial class Posix
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

    /// <summary>An owner or group that <see cref="TrySetOwner"/> leaves as it is ((uid_t)-1).</summary>
    public const uint Unchanged = uint.MaxValue;

    private const int LockEx = 2, LockNb = 4;
    private const int AtFdCwd = -100;
    private const uint StatxUid = 0x8, StatxGid = 0x10;

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

    /// <summary>
    /// Linux <c>statx(dirfd, path, flags, mask)</c> into <paramref name="buffer"/> (256 bytes: struct statx has
    /// one layout on every architecture, include/uapi/linux/stat.h). 0 on success, else the errno (ENOSYS
    /// where there is no statx: another system, an old C library, a seccomp filter that refuses it).
    /// </summary>
    public static int Statx(int dirfd, string path, int flags, uint mask, byte* buffer)
    {
        if (!OperatingSystem.IsLinux()) return Enosys;
        try
        {
            return statx(dirfd, path, flags, mask, buffer) == 0 ? 0 : Marshal.GetLastPInvokeError();
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return Enosys;
        }
    }

    /// <summary>ENOSYS: what <see cref="Statx"/> answers where there is no statx.</summary>
    public const int Enosys = 38;

    /// <summary>statx's "relative to the working folder" (AT_FDCWD).</summary>
    public const int AtCurrentFolder = AtFdCwd;

    /// <summary>
    /// Waits until <paramref name="folder"/>'s entries (a rename into it) are on disk: <c>fsync</c> of the
    /// folder itself, which syncing the files does not do. False where it cannot be done.
    /// </summary>
    public static bool TrySyncFolder(string folder)
    {
        if (OperatingSystem.IsWindows()) return false;
        try
        {
            int fd = open(folder, ORdOnly | (OperatingSystem.IsLinux() ? ODirectoryLinux : 0));
            if (fd < 0) return false;
            try { return fsync(fd) == 0; }
            finally { close(fd); }
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }

    private const int ORdOnly = 0, ODirectoryLinux = 0x10000;

    /// <summary>The owner and group of <paramref name="path"/> (Linux <c>statx</c>); false where unknown.</summary>
    public static bool TryGetOwner(string path, out uint uid, out uint gid)
    {
        uid = gid = 0;
        // stx_mask at 0, stx_uid at 20, stx_gid at 24.
        byte* buffer = stackalloc byte[256];
        if (Statx(AtFdCwd, path, 0, StatxUid | StatxGid, buffer) != 0) return false;
        if ((*(uint*)buffer & (StatxUid | StatxGid)) != (StatxUid | StatxGid)) return false;
        uid = *(uint*)(buffer + 20);
        gid = *(uint*)(buffer + 24);
        return true;
    }

    /// <summary>Sets the owner and group of <paramref name="path"/> (not following a link); false if refused.</summary>
    public static bool TrySetOwner(string path, uint uid, uint gid)
    {
        if (OperatingSystem.IsWindows()) return false;
        try
        {
            return lchown(path, uid, gid) == 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int flock(int fd, int operation);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statx(int dirfd, string path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int lchown(string path, uint owner, uint group);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fsync(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);
}
