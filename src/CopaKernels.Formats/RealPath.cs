namespace CopaKernels.Formats;

/// <summary>
/// The physical location a path names: absolute, with every symbolic link resolved (links to folders
/// in the middle of the path too) and <c>..</c> applied after the link before it, as the kernel does.
/// Two paths name the same place exactly when their real paths are equal, so this is what "the
/// output must not be or lie inside an input" compares; a lexical check is fooled by
/// <c>ln -s ADAPTER lnk; --out lnk/merged</c>. The path need not exist: the longest existing prefix is
/// resolved and the rest appended, which is where creating it would put it.
/// </summary>
public static class RealPath
{
    /// <summary>The most links followed, as Linux's ELOOP limit.</summary>
    private const int MaxLinks = 40;

    /// <summary>Resolves <paramref name="path"/> (relative to the current folder unless rooted).</summary>
    /// <exception cref="ArgumentException">The path is empty.</exception>
    /// <exception cref="IOException">A symbolic link loop, or more than 40 links.</exception>
    public static string Of(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        // Windows paths (drives, UNC) are out of scope here: only the lexical form.
        if (OperatingSystem.IsWindows()) return Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));

        // The current folder as the kernel returns it (getcwd) is already a real path.
        var current = Path.IsPathRooted(path) ? "/" : Environment.CurrentDirectory;
        var pending = new Stack<string>();
        Push(pending, path);
        int links = 0;
        bool missing = false;
        while (pending.Count > 0)
        {
            var name = pending.Pop();
            if (name is "" or ".") continue;
            if (name == "..")
            {
                current = Path.GetDirectoryName(current) ?? current; // the parent of / is /
                continue;
            }
            var next = Path.Join(current, name);
            if (!missing)
            {
                if (new FileInfo(next).LinkTarget is { } target)
                {
                    if (++links > MaxLinks) throw new IOException("too many levels of symbolic links");
                    // A relative target is relative to the folder holding the link.
                    if (Path.IsPathRooted(target)) current = "/";
                    Push(pending, target);
                    continue;
                }
                // Below a name that does not exist nothing can be a link: the rest is appended as it is.
                missing = !Path.Exists(next);
            }
            current = next;
        }
        return current;
    }

    /// <summary>
    /// <see cref="Of"/> for a path the user gave: one that cannot be resolved (a link loop, a folder
    /// that cannot be read) is reported as that path's fault.
    /// </summary>
    public static string OfInput(string path)
    {
        try { return Of(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CopaInputException(path, null, $"cannot resolve the path: {e.Message.TrimEnd('.')}", e);
        }
    }

    /// <summary>Whether <paramref name="child"/> lies strictly inside folder <paramref name="parent"/> (both real paths).</summary>
    public static bool IsInside(string child, string parent) =>
        child.StartsWith(parent.TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    private static void Push(Stack<string> pending, string path)
    {
        var names = path.Split(Path.DirectorySeparatorChar);
        for (int i = names.Length - 1; i >= 0; i--) pending.Push(names[i]);
    }
}
