namespace CopaKernels.Formats;

/// <summary>
/// Base of every error caused by bad input (a malformed file, an unsupported adapter, a bad
/// parameter). The command-line tool turns it into one line <c>error: path: [tensor: ]reason</c>
/// and exit code 2.
/// </summary>
public class CopaInputException : Exception
{
    /// <summary>Creates the exception.</summary>
    public CopaInputException(string? path, string? tensor, string reason, Exception? inner = null)
        : base(Format(path, tensor, reason), inner)
    {
        FilePath = path;
        Tensor = tensor;
        Reason = reason;
    }

    /// <summary>The file or folder at fault, when there is one.</summary>
    public string? FilePath { get; }

    /// <summary>The tensor at fault, when there is one.</summary>
    public string? Tensor { get; }

    /// <summary>The reason alone, lowercase, without path or tensor.</summary>
    public string Reason { get; }

    private static string Format(string? path, string? tensor, string reason)
    {
        var s = reason;
        if (!string.IsNullOrEmpty(tensor)) s = $"{tensor}: {s}";
        if (!string.IsNullOrEmpty(path)) s = $"{path}: {s}";
        return s;
    }
}
