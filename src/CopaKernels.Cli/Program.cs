using System.CommandLine;
using CopaKernels.Cli.Commands;
using CopaKernels.Formats;

namespace CopaKernels.Cli;

/// <summary>Entry point of <c>copa</c>: parses the command line and maps failures to exit codes (SEMANTICS §7).</summary>
public static partial class Program
{
    /// <summary>Success.</summary>
    public const int ExitOk = 0;
    /// <summary>Any failure that is not the input's fault.</summary>
    public const int ExitFailure = 1;
    /// <summary>Invalid input or usage.</summary>
    public const int ExitInvalid = 2;
    /// <summary>Interrupted by Ctrl-C (SIGINT); other signals give 128 + their number (<see cref="InterruptedException"/>).</summary>
    public const int ExitInterrupted = 130;

    /// <summary>Runs the tool.</summary>
    public static int Main(string[] args)
    {
        // Console.Error itself, so that the progress display still recognises the console (and code
        // outside ours that writes there is covered too).
        Console.SetError(new DroppingWriter(Console.Error));
        return Run(args, Console.Out, Console.Error);
    }

    /// <summary>Runs the tool with explicit output writers (used by tests).</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var root = new RootCommand("copa: merge LoRA adapters (CoPA-Merging, TIES, DARE, PCB, ...) with SIMD CPU and GPU kernels");
        root.Subcommands.Add(InspectCommand.Create(stdout));
        root.Subcommands.Add(DevicesCommand.Create(stdout));
        root.Subcommands.Add(BenchCommand.Create(stdout));
        root.Subcommands.Add(ReportCommand.Create(stdout));
        root.Subcommands.Add(MergeCommand.Create(stdout, stderr));
        root.Subcommands.Add(DemoCommand.Create(stdout, stderr));

        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            stderr.WriteLine($"error: {OneLine(string.Join(" ", parse.Errors.Select(e => e.Message)))} (see 'copa --help')");
            return ExitInvalid;
        }
        try
        {
            return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e)
        {
            return Report(e, stderr);
        }
    }

    /// <summary>Prints one error line for <paramref name="e"/> and returns its exit code.</summary>
    public static int Report(Exception e, TextWriter stderr)
    {
        switch (e)
        {
            case CopaInputException input:
                stderr.WriteLine($"error: {OneLine(AsFlags(input.Message))}");
                return ExitInvalid;
            case InterruptedException signalled:
                stderr.WriteLine($"error: {signalled.Message}");
                return signalled.ExitCode;
            case OperationCanceledException:
                stderr.WriteLine("error: interrupted");
                return ExitInterrupted;
            case AggregateException { InnerExceptions.Count: 1 } agg:
                return Report(agg.InnerExceptions[0], stderr);
            default:
                stderr.WriteLine($"error: {e.GetType().Name}: {OneLine(AsFlags(e.Message))}");
                return ExitFailure;
        }
    }

    private static string OneLine(string s) => s.ReplaceLineEndings(" ");

    /// <summary>
    /// The library names a setting as <c>`rank`</c> (a config key, a request property); on the command line it
    /// is the flag <c>--rank</c> (<c>`adapter`</c> is <c>--adapter</c>). Values are quoted with ' ', never with `.
    /// </summary>
    internal static string AsFlags(string message) => SettingName().Replace(message, "--$1");

    [System.Text.RegularExpressions.GeneratedRegex("`([a-z][a-z-]*)`", System.Text.RegularExpressions.RegexOptions.CultureInvariant)]
    private static partial System.Text.RegularExpressions.Regex SettingName();
}
