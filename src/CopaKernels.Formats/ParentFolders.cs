namespace CopaKernels.Formats;

/// <summary>
/// The folders a run creates above its output, so that a run that does not finish takes them away
/// again, and only them: what existed before stays, and so does a folder something else has put a
/// file in meanwhile.
/// </summary>
public static class ParentFolders
{
    /// <summary><paramref name="folder"/> and each of its ancestors that does not exist yet, deepest first.</summary>
    public static List<string> Missing(string? folder)
    {
        var missing = new List<string>();
        for (var p = folder; p != null && !Directory.Exists(p) && Path.GetDirectoryName(p) is { } up; p = up) missing.Add(p);
        return missing;
    }

    /// <summary>Removes <paramref name="folders"/> (deepest first, as <see cref="Missing"/> lists them) while each is empty; stops at the first that is not.</summary>
    public static void RemoveEmpty(IReadOnlyList<string> folders)
    {
        foreach (var folder in folders)
        {
            try { if (Directory.Exists(folder)) Directory.Delete(folder); }
            catch (IOException) { return; }
            catch (UnauthorizedAccessException) { return; }
        }
    }
}
