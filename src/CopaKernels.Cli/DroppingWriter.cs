using System.Text;

namespace CopaKernels.Cli;

/// <summary>
/// Wraps stderr so that a write that fails is dropped instead of failing the command: progress and
/// error lines are for a person, and neither a merge's output nor the exit code may depend on whether
/// they can be written (stderr closed with <c>2&gt;&amp;-</c>, a full disk under a redirected log).
/// With descriptor 2 closed at start the runtime puts its signal pipe's read end there, so every write
/// to stderr fails with EBADF; before this, the first progress line ended the merge and the error
/// report about it aborted the process (exit 134).
/// </summary>
internal sealed class DroppingWriter(TextWriter inner) : TextWriter
{
    public override Encoding Encoding => inner.Encoding;

    public override IFormatProvider FormatProvider => inner.FormatProvider;

    [System.Diagnostics.CodeAnalysis.AllowNull]
    public override string NewLine
    {
        get => inner.NewLine;
        set => inner.NewLine = value;
    }

    public override void Write(char value) => Try(w => w.Write(value));

    public override void Write(string? value) => Try(w => w.Write(value));

    public override void Write(char[] buffer, int index, int count) => Try(w => w.Write(buffer, index, count));

    public override void Write(ReadOnlySpan<char> buffer) => Write(buffer.ToString());

    public override void WriteLine() => Try(w => w.WriteLine());

    public override void WriteLine(string? value) => Try(w => w.WriteLine(value));

    public override void WriteLine(ReadOnlySpan<char> buffer) => WriteLine(buffer.ToString());

    public override void Flush() => Try(w => w.Flush());

    private void Try(Action<TextWriter> write)
    {
        try
        {
            write(inner);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Nowhere left to say it.
        }
    }
}
