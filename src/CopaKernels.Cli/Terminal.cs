using Spectre.Console;

namespace CopaKernels.Cli;

/// <summary>Builds the Spectre console for a writer: colours and live widgets only on a real terminal.</summary>
internal static class Terminal
{
    public static IAnsiConsole For(TextWriter writer)
    {
        bool interactive = ReferenceEquals(writer, Console.Out) && !Console.IsOutputRedirected;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = interactive ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = interactive ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = interactive ? InteractionSupport.Detect : InteractionSupport.No,
        });
        // Redirected output has no width; do not wrap long tensor names at 80 columns.
        if (!interactive) console.Profile.Width = 240;
        return console;
    }

    /// <summary>Human-readable byte count (binary units).</summary>
    public static string Bytes(long n) => CopaKernels.Formats.MemorySize.Format(n);

    /// <summary>"1 tensor", "2 tensors": a count and its noun, plural unless the count is one.</summary>
    public static string Count(long n, string noun) => n == 1 ? $"1 {noun}" : $"{n} {noun}s";
}
