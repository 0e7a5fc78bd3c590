using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace CopaKernels.Formats;

/// <summary>
/// Starts the kernel writing a file's dirty pages to disk without waiting for it (Linux
/// <c>sync_file_range(…, SYNC_FILE_RANGE_WRITE)</c>), so that the one sync before an output folder is
/// renamed into place finds most of the data already on disk instead of all of it. Nothing changes in
/// what is written or when it is durable. A no-op elsewhere, or where the call is refused.
/// </summary>
internal static partial class Writeback
{
    /// <summary>How much freshly written data triggers a writeback request.</summary>
    public const long Chunk = 32L << 20;

    private const uint SyncFileRangeWrite = 2;
    private static bool s_unavailable = !OperatingSystem.IsLinux();

    /// <summary>Asks for the byte range [offset, offset + length) of the file to be written back now.</summary>
    public static void Start(SafeFileHandle file, long offset, long length)
    {
        if (s_unavailable || length <= 0) return;
        bool added = false;
        try
        {
            file.DangerousAddRef(ref added);
            if (sync_file_range((int)file.DangerousGetHandle(), offset, length, SyncFileRangeWrite) != 0)
                s_unavailable = Marshal.GetLastPInvokeError() is 38 /* ENOSYS */ or 95 /* EOPNOTSUPP */;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            s_unavailable = true;
        }
        finally
        {
            if (added) file.DangerousRelease();
        }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int sync_file_range(int fd, long offset, long nbytes, uint flags);
}
