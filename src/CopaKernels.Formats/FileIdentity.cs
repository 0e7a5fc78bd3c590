using Microsoft.Win32.SafeHandles;

namespace CopaKernels.Formats;

/// <summary>
/// Who a file is and what state it is in: device, inode, size, modification and change times. Taken
/// when an input is opened and again before an output is committed, so that an input rewritten in
/// place while a merge read it (same size: a merge would read half old, half new bytes), or replaced
/// by another file, is a failure instead of an output that matches neither version. The change time
/// (ctime) cannot be set back by a writer, so even a rewrite that restores the modification time shows.
/// </summary>
/// <remarks>
/// Linux: <c>statx(2)</c>, whose structure has one layout on every architecture (offsets from
/// <c>include/uapi/linux/stat.h</c>), nanosecond times. Elsewhere, or where statx is refused: size and
/// modification time from the runtime, with device and inode 0.
/// </remarks>
/// <param name="Device">Device number (major &lt;&lt; 32 | minor), 0 where unknown.</param>
/// <param name="Inode">Inode number, 0 where unknown.</param>
/// <param name="Size">Size in bytes.</param>
/// <param name="ModifiedNs">Modification time, nanoseconds since the epoch.</param>
/// <param name="ChangedNs">Status change time (ctime), nanoseconds since the epoch; 0 where unknown.</param>
public readonly record struct FileIdentity(ulong Device, ulong Inode, long Size, long ModifiedNs, long ChangedNs)
{
    private const int AtEmptyPath = 0x1000;
    private const uint StatxBasicStats = 0x7ff;
    private static bool s_noStatx = !OperatingSystem.IsLinux();

    /// <summary>The identity of the file open as <paramref name="handle"/> (not of whatever its path names now).</summary>
    public static FileIdentity Of(SafeFileHandle handle)
    {
        if (!s_noStatx)
        {
            bool added = false;
            try
            {
                handle.DangerousAddRef(ref added);
                if (Statx((int)handle.DangerousGetHandle(), "", AtEmptyPath) is { } id) return id;
            }
            finally
            {
                if (added) handle.DangerousRelease();
            }
        }
        return new FileIdentity(0, 0, RandomAccess.GetLength(handle), Ns(File.GetLastWriteTimeUtc(handle)), 0);
    }

    /// <summary>The identity of the file <paramref name="path"/> names now (symbolic links followed), or null when there is none.</summary>
    public static FileIdentity? Of(string path)
    {
        if (!s_noStatx && Statx(Posix.AtCurrentFolder, path, 0) is { } id) return id;
        var info = new FileInfo(path);
        return info.Exists ? new FileIdentity(0, 0, info.Length, Ns(info.LastWriteTimeUtc), 0) : null;
    }

    /// <summary>What differs between <paramref name="before"/> and the file <paramref name="path"/> names now, in words, or null.</summary>
    public static string? ChangeAt(string path, FileIdentity before) =>
        Of(path) is { } now ? now.ChangeSince(before) : "it was deleted or moved";

    /// <summary>The reason an input error gives for <paramref name="change"/> (<see cref="ChangeSince"/>) before a commit.</summary>
    public static string ChangedReason(string change) =>
        $"input changed during the merge ({change}); nothing was written, run the merge again";

    /// <summary>What differs from <paramref name="before"/>, in words ("size 10 → 12 bytes", "replaced by another file"), or null.</summary>
    /// <remarks>A field one of the two could not read (0: device, inode or ctime without statx) is not compared.</remarks>
    public string? ChangeSince(FileIdentity before)
    {
        static bool Differ(ulong a, ulong b) => a != 0 && b != 0 && a != b;
        if (Differ(Device, before.Device) || Differ(Inode, before.Inode)) return "it was replaced by another file";
        if (Size != before.Size) return $"its size changed from {before.Size} to {Size} bytes";
        if (ModifiedNs != before.ModifiedNs || Differ((ulong)ChangedNs, (ulong)before.ChangedNs)) return "it was written to";
        return null;
    }

    private static long Ns(DateTime utc) => (utc - DateTime.UnixEpoch).Ticks * 100;

    private static unsafe FileIdentity? Statx(int dirfd, string path, int flags)
    {
        byte* b = stackalloc byte[256];
        int error = Posix.Statx(dirfd, path, flags, StatxBasicStats, b);
        if (error != 0)
        {
            if (error is Posix.Enosys or 1 /* EPERM: seccomp */) s_noStatx = true;
            return null;
        }
        static long Time(byte* t) => *(long*)t * 1_000_000_000L + *(uint*)(t + 8);
        ulong device = ((ulong)*(uint*)(b + 0x88) << 32) | *(uint*)(b + 0x8C);
        return new FileIdentity(device, *(ulong*)(b + 0x20), (long)*(ulong*)(b + 0x28), Time(b + 0x70), Time(b + 0x60));
    }
}
