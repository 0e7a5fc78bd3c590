using System.Runtime.InteropServices;

namespace CopaKernels.Cli;

/// <summary>
/// While alive, turns SIGINT (Ctrl-C), SIGTERM, SIGHUP (terminal closed) and SIGQUIT into a
/// cancellation, so that a merge stops at its next check and removes its temporary folder instead of
/// dying with it in place. The command then ends with <see cref="InterruptedException"/>: exit code
/// 128 + the signal's number, what a shell reports for a process that signal killed (130, 143, 129,
/// 131). A second signal is left to its default action and ends the process at once, for a run that
/// does not stop soon enough. A signal the process was started with ignored (SIGHUP under nohup)
/// stays ignored: .NET installs no handler for it.
/// <para>
/// Create it before opening a device backend. Native libraries a backend loads install handlers of their
/// own: PoCL's LLVM does for SIGHUP, SIGINT and SIGTERM, and passes a signal on to the handler it found
/// installed. Registered first, .NET's handler is the one it finds; registered after, .NET took LLVM's
/// for the original one, and SIGHUP then killed the process with its temporary folder in place.
/// </para>
/// </summary>
internal sealed class Interruption : IDisposable
{
    /// <summary>The handled signals with their numbers, the same on Linux and macOS (POSIX).</summary>
    private static readonly (PosixSignal Signal, int Number)[] Handled =
        [(PosixSignal.SIGHUP, 1), (PosixSignal.SIGINT, 2), (PosixSignal.SIGQUIT, 3), (PosixSignal.SIGTERM, 15)];

    private readonly CancellationTokenSource _cts = new();
    private readonly PosixSignalRegistration[] _registrations;
    private int _signal;

    public Interruption()
    {
        _registrations = Handled.Select(h => PosixSignalRegistration.Create(h.Signal, context =>
        {
            if (Interlocked.CompareExchange(ref _signal, h.Number, 0) != 0) return; // the second one: default action
            context.Cancel = true;
            _cts.Cancel();
        })).ToArray();
    }

    /// <summary>Cancelled by the first signal.</summary>
    public CancellationToken Token => _cts.Token;

    /// <summary>The number of the first signal received, or 0.</summary>
    public int Signal => Volatile.Read(ref _signal);

    /// <summary>
    /// Runs <paramref name="work"/>; if a signal came meanwhile, whatever it ended with (the
    /// cancellation, or a failure the stop caused) becomes an <see cref="InterruptedException"/>.
    /// </summary>
    public T Run<T>(Func<CancellationToken, T> work)
    {
        try
        {
            return work(Token);
        }
        catch (Exception e) when (Signal != 0 && e is not InterruptedException)
        {
            throw new InterruptedException(Signal, e);
        }
    }

    /// <summary>Unregisters the handlers: signals have their default action again.</summary>
    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        // The token source is not disposed: a handler still running on the signal thread may cancel it.
    }
}

/// <summary>A command stopped by a signal (<see cref="Interruption"/>): exit code 128 + <see cref="Signal"/>.</summary>
internal sealed class InterruptedException(int signal, Exception? inner = null)
    : OperationCanceledException($"interrupted by {NameOf(signal)}", inner)
{
    /// <summary>The signal's number.</summary>
    public int Signal { get; } = signal;

    /// <summary>The exit code shells expect of a process stopped by <see cref="Signal"/>.</summary>
    public int ExitCode => 128 + Signal;

    private static string NameOf(int signal) => signal switch
    {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        15 => "SIGTERM",
        _ => $"signal {signal}",
    };
}
