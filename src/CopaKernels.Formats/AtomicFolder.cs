namespace CopaKernels.Formats;

/// <summary>
/// An output folder built under a temporary name beside its destination and moved into place only
/// when complete. Disposing without <see cref="Commit"/> removes the temporary folder, so a failed or
/// interrupted run leaves nothing behind.
/// </summary>
public sealed class AtomicFolder : IDisposable
{
    private bool _committed;

    private AtomicFolder(string finalPath, string tempPath)
    {
        FinalPath = finalPath;
        TempPath = tempPath;
    }

    /// <summary>Where the folder lands.</summary>
    public string FinalPath { get; }

    /// <summary>The folder to write into until <see cref="Commit"/>.</summary>
    public string TempPath { get; }

    /// <summary>
    /// Starts an output folder. The destination must not exist, or be an empty folder. Symbolic links
    /// in <paramref name="path"/> are resolved first: the folder is built beside, and lands at, the
    /// place the path names (a link to an empty folder is filled, not replaced).
    /// </summary>
    public static AtomicFolder Create(string path)
    {
        if (string.IsNullOrEmpty(path)) throw new CopaInputException(null, null, "the output path is empty");
        var full = RealPath.OfInput(path);
        if (File.Exists(full))
            throw new CopaInputException(path, null, "output path is a file");
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
            throw new CopaInputException(path, null, "output folder exists and is not empty");
        var parent = Path.GetDirectoryName(full) ?? throw new CopaInputException(path, null, "output path has no parent folder");
        try
        {
            Directory.CreateDirectory(parent);
            var temp = Path.Combine(parent, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
            Directory.CreateDirectory(temp);
            return new AtomicFolder(full, temp);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CopaInputException(path, null, $"cannot create output folder: {e.Message.TrimEnd('.')}", e);
        }
    }

    /// <summary>A path inside the temporary folder.</summary>
    public string PathOf(string name) => Path.Combine(TempPath, name);

    /// <summary>Syncs every file to disk (unless <paramref name="sync"/> is false), then moves the finished folder into place.</summary>
    public void Commit(bool sync = true)
    {
        // Durable before visible: after a crash the output folder either does not exist or is complete.
        if (sync)
            foreach (var file in Directory.EnumerateFiles(TempPath, "*", SearchOption.AllDirectories))
            {
                using var fs = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
                fs.Flush(flushToDisk: true);
            }
        if (Directory.Exists(FinalPath)) Directory.Delete(FinalPath); // empty, checked at Create
        Directory.Move(TempPath, FinalPath);
        _committed = true;
    }

    /// <summary>Removes the temporary folder unless committed.</summary>
    public void Dispose()
    {
        if (_committed) return;
        try { if (Directory.Exists(TempPath)) Directory.Delete(TempPath, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
