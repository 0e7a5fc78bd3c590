using System.Text.RegularExpressions;

namespace CopaKernels.Formats;

/// <summary>
/// An output folder built under a temporary name beside its destination and moved into place only
/// when complete. Disposing without <see cref="Commit"/> removes the temporary folder, so a failed or
/// interrupted run leaves nothing behind.
/// </summary>
/// <remarks>
/// A process killed outright (kill -9, power loss) cannot remove anything, so the temporary folders
/// are recognisable and owned: <c>.copa-ID.tmp</c>, with a lock file <c>.copa-ID.lock</c> beside it on
/// which the run holds an advisory lock (<see cref="Posix.TryLock"/>) from before the folder exists
/// until after it has been moved into place or removed. The kernel releases the lock when the process
/// ends, however it ends, so the next <see cref="Create"/> in the same parent folder removes the pairs
/// whose lock it can take (their run is gone) and leaves those of live runs alone. The lock file sits
/// beside the folder rather than in it so that it never lands in the output. The name's length does
/// not depend on the output's, so any name the file system accepts for the output works.
/// </remarks>
public sealed partial class AtomicFolder : IDisposable
{
    private const string Prefix = ".copa-";
    private const string TempSuffix = ".tmp";
    private const string LockSuffix = ".lock";

    /// <summary>How often a new temporary name is tried after losing its lock to a concurrent clean-up.</summary>
    private const int ClaimAttempts = 8;

    private readonly FileStream _lock;
    private readonly string _lockPath;
    private readonly List<string> _createdParents;
    private bool _committed;

    private AtomicFolder(string finalPath, string tempPath, FileStream held, string lockPath, List<string> createdParents)
    {
        FinalPath = finalPath;
        TempPath = tempPath;
        _lock = held;
        _lockPath = lockPath;
        _createdParents = createdParents;
    }

    /// <summary>Where the folder lands.</summary>
    public string FinalPath { get; }

    /// <summary>The folder to write into until <see cref="Commit"/>.</summary>
    public string TempPath { get; }

    /// <summary>
    /// Starts an output folder. The destination must not exist, or be an empty folder. Symbolic links
    /// in <paramref name="path"/> are resolved first: the folder is built beside, and lands at, the
    /// place the path names (a link to an empty folder is filled, not replaced). Parent folders are
    /// created as needed, and removed again if the run does not commit. Temporary folders that
    /// crashed runs left in the same parent folder are removed.
    /// </summary>
    public static AtomicFolder Create(string path)
    {
        if (string.IsNullOrEmpty(path)) throw new CopaInputException(null, null, "the output path is empty");
        var full = RealPath.OfInput(path);
        CheckDestination(path, full);
        var parent = Path.GetDirectoryName(full) ?? throw new CopaInputException(path, null, "output path has no parent folder");
        var created = ParentFolders.Missing(parent);
        try
        {
            var folder = Claim(full, parent, created);
            RemoveDead(parent, folder._lockPath);
            return folder;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            ParentFolders.RemoveEmpty(created);
            throw new CopaInputException(path, null, $"cannot create output folder: {e.Message.TrimEnd('.')}", e);
        }
    }

    /// <summary>
    /// Throws <see cref="CopaInputException"/> unless <paramref name="full"/> (the real path of
    /// <paramref name="path"/>) can become the output: absent, or an empty folder that is not a mount
    /// point. A mount point cannot be replaced by a rename: the whole merge would run and then fail.
    /// </summary>
    public static void CheckDestination(string path, string full)
    {
        if (File.Exists(full)) throw new CopaInputException(path, null, "output path is a file");
        if (!Directory.Exists(full)) return;
        if (Directory.EnumerateFileSystemEntries(full).Any()) throw new CopaInputException(path, null, "output folder exists and is not empty");
        if (Path.GetDirectoryName(full) is { } parent && FileIdentity.Of(full) is { Device: not 0 } here
            && FileIdentity.Of(parent) is { Device: not 0 } above && here.Device != above.Device)
            throw new CopaInputException(path, null, "output folder is a mount point, which the finished output cannot be renamed onto; give a new folder inside it");
    }

    /// <summary>The files the folder holds now, for <see cref="SyncFiles"/>.</summary>
    public IReadOnlyList<string> Files() => Directory.GetFiles(TempPath, "*", SearchOption.AllDirectories);

    /// <summary>
    /// Syncs <paramref name="files"/> (default: every file the folder holds now) to disk, so that the sync of
    /// <see cref="Commit"/> finds only what was written after: a caller with work left that does not touch
    /// these files (a report to finish, in files of its own) overlaps the wait for the disk with it.
    /// </summary>
    public void SyncFiles(IEnumerable<string>? files = null)
    {
        foreach (var file in files ?? Directory.EnumerateFiles(TempPath, "*", SearchOption.AllDirectories))
        {
            using var fs = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
            fs.Flush(flushToDisk: true);
        }
    }

    /// <summary>Syncs every file to disk (unless <paramref name="sync"/> is false), then moves the finished folder into place.</summary>
    public void Commit(bool sync = true)
    {
        // Durable before visible: after a crash the output folder either does not exist or is complete.
        if (sync) SyncFiles();
        if (Directory.Exists(FinalPath))
        {
            AdoptAttributes(FinalPath);
            Directory.Delete(FinalPath); // empty, checked at Create
        }
        Directory.Move(TempPath, FinalPath);
        _committed = true;
        // The rename itself is durable only once the parent folder is synced. Until then a power loss
        // could undo it, and the next merge here would take the complete folder for a dead one.
        if (sync) Posix.TrySyncFolder(Path.GetDirectoryName(FinalPath)!);
        Release();
    }

    /// <summary>Removes the temporary folder, and the parent folders <see cref="Create"/> made, unless committed.</summary>
    public void Dispose()
    {
        if (_committed) return;
        try { if (Directory.Exists(TempPath)) Directory.Delete(TempPath, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        Release();
        ParentFolders.RemoveEmpty(_createdParents);
    }

    /// <summary>
    /// Gives the finished folder the permission bits (setgid and sticky included) and, where this
    /// process may set them (as root; a group it belongs to), the owner and group of the empty
    /// folder it replaces. Replaced, because a rename cannot fill an existing folder and moving the
    /// files in one by one would let readers see a partial output; adopted, so that a folder prepared
    /// for the output (a shared group, a mode) stays as it was prepared. ACLs and extended
    /// attributes are not copied.
    /// </summary>
    private void AdoptAttributes(string existing)
    {
        if (OperatingSystem.IsWindows()) return;
        if (Posix.TryGetOwner(existing, out var uid, out var gid) && !Posix.TrySetOwner(TempPath, uid, gid))
            Posix.TrySetOwner(TempPath, Posix.Unchanged, gid);
        // After the owner: changing it clears setuid/setgid bits.
        File.SetUnixFileMode(TempPath, File.GetUnixFileMode(existing));
    }

    /// <summary>
    /// Creates and locks <c>.copa-ID.lock</c>, then creates <c>.copa-ID.tmp</c>. Opening and locking
    /// are two steps, so a concurrent <see cref="RemoveDead"/> can take the new lock in between; it then
    /// removes the file, and this run tries another ID.
    /// </summary>
    private static AtomicFolder Claim(string full, string parent, List<string> createdParents)
    {
        for (int attempt = 1; ; attempt++)
        {
            // Each time: a failed run that created this folder too may have just removed it.
            Directory.CreateDirectory(parent);
            var id = Guid.NewGuid().ToString("N");
            var lockPath = Path.Combine(parent, Prefix + id + LockSuffix);
            FileStream? held = null;
            try
            {
                held = new FileStream(lockPath, FileMode.CreateNew, FileAccess.Write, FileShare.None);
                // Unsupported: no file system lock here, so nobody can take it from us either (and nothing here is removed).
                if (Posix.TryLock(held.SafeFileHandle) != Posix.LockResult.Busy && File.Exists(lockPath))
                {
                    var temp = Path.Combine(parent, Prefix + id + TempSuffix);
                    Directory.CreateDirectory(temp);
                    var folder = new AtomicFolder(full, temp, held, lockPath, createdParents);
                    held = null;
                    return folder;
                }
            }
            catch (IOException) when (attempt < ClaimAttempts)
            {
                // Lost the lock to a clean-up (EWOULDBLOCK) or a transient failure: try again, the last error is thrown.
            }
            finally
            {
                if (held != null)
                {
                    TryDelete(lockPath);
                    held.Dispose();
                }
            }
            if (attempt >= ClaimAttempts) throw new IOException($"could not lock a temporary folder in {parent}");
        }
    }

    /// <summary>Ends the claim: the lock file goes first, while still locked, then the lock.</summary>
    private void Release()
    {
        TryDelete(_lockPath);
        _lock.Dispose();
    }

    [GeneratedRegex(@"^\.copa-([0-9a-f]{32})\.(tmp|lock)$")]
    private static partial Regex OwnedName();

    /// <summary>
    /// Removes the temporary folders and lock files in <paramref name="parent"/> whose run is gone:
    /// those whose lock this process can take. A folder whose lock file is missing is gone too (a run
    /// creates the lock first and removes it last). Everything is removed while holding the lock, so
    /// a run that is starting cannot take it meanwhile. Best effort: what cannot be removed stays.
    /// </summary>
    private static void RemoveDead(string parent, string ownLock)
    {
        IEnumerable<string> ids;
        try
        {
            ids = Directory.EnumerateFileSystemEntries(parent, Prefix + "*")
                .Select(e => OwnedName().Match(Path.GetFileName(e)))
                .Where(m => m.Success)
                .Select(m => m.Groups[1].Value)
                .Distinct()
                .ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return;
        }
        foreach (var id in ids)
        {
            var lockPath = Path.Combine(parent, Prefix + id + LockSuffix);
            if (lockPath == ownLock) continue;
            var temp = Path.Combine(parent, Prefix + id + TempSuffix);
            FileStream? held = null;
            try
            {
                try
                {
                    held = new FileStream(lockPath, FileMode.Open, FileAccess.Read, FileShare.None);
                }
                catch (FileNotFoundException)
                {
                    // No lock file: its run is gone, or another clean-up is finishing it.
                }
                if (held != null && Posix.TryLock(held.SafeFileHandle) != Posix.LockResult.Held) continue; // alive, or unknowable
                if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
                if (held != null) File.Delete(lockPath);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Locked by its live run (EWOULDBLOCK), or not ours to remove.
            }
            finally
            {
                held?.Dispose();
            }
        }
    }

    private static void TryDelete(string file)
    {
        try { File.Delete(file); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
