using System.Diagnostics;
using System.Runtime.InteropServices;

namespace CopaKernels.Tests.Cli;

/// <summary>
/// The built <c>copa</c> (copa.dll, which the test project's reference puts beside the tests) run as a
/// child process, for what needs a real process: signals, kill -9, a closed stderr.
/// </summary>
internal sealed partial class CopaProcess : IDisposable
{
    public const int SigHup = 1, SigInt = 2, SigKill = 9, SigTerm = 15;

    private readonly Process _process;
    private readonly Task<string> _stdout;
    private readonly Task<string> _stderr;

    private CopaProcess(Process process)
    {
        _process = process;
        _stdout = process.StandardOutput.ReadToEndAsync();
        _stderr = process.StandardError.ReadToEndAsync();
    }

    /// <summary>
    /// Starts <c>copa args</c>. The signals copa handles are reset to their default action first
    /// (<c>env --default-signal</c>): a child inherits ignored signals, and a test runner started in
    /// the background by a non-interactive shell has SIGINT ignored, which .NET then respects.
    /// </summary>
    public static CopaProcess Start(params string[] args) =>
        Launch("/usr/bin/env", ["--default-signal=HUP,INT,QUIT,TERM", .. Copa(args)]);

    /// <summary>Starts <c>copa args</c> through <c>sh -c</c>, with <paramref name="redirections"/> (e.g. <c>2&gt;&amp;-</c>) applied.</summary>
    public static CopaProcess StartInShell(string redirections, params string[] args) =>
        Launch("/bin/sh", ["-c", $"exec \"$@\" {redirections}", "sh", .. Copa(args)]);

    /// <summary>
    /// Starts <c>copa args</c> in a mount namespace of its own (<c>unshare</c>; as an unprivileged user
    /// with a user namespace too) in which an empty tmpfs is mounted on <paramref name="mountPoint"/>,
    /// so a test can hand copa a mount point without touching the machine's mounts.
    /// </summary>
    public static CopaProcess StartWithMountPoint(string mountPoint, params string[] args) =>
        // Propagation is made private inside the new namespace (so the tmpfs never shows outside it) where
        // it can be; inside a chroot, whose root is no mount point, unshare's own attempt fails, so it is skipped there.
        Launch("/usr/bin/unshare", [Environment.UserName == "root" ? "-m" : "-rm", "--propagation", "unchanged", "/bin/sh", "-c",
            "mount --make-rprivate / 2>/dev/null; mount -t tmpfs copa-test \"$0\" && exec \"$@\"", mountPoint, .. Copa(args)]);

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    /// <summary>Sends <paramref name="signal"/> to the process.</summary>
    public void Signal(int signal) => Assert.True(kill(_process.Id, signal) == 0, $"kill({_process.Id}, {signal}) failed: errno {Marshal.GetLastPInvokeError()}");

    /// <summary>Waits for the exit (generously: the machine may be busy) and returns the exit code and output.</summary>
    public (int Code, string Out, string Err) Wait(int seconds = 120)
    {
        if (!_process.WaitForExit(TimeSpan.FromSeconds(seconds)))
            Assert.Fail($"copa (pid {_process.Id}) still running after {seconds} s");
        _process.WaitForExit(); // the output readers finish too
        return (_process.ExitCode, _stdout.Result, _stderr.Result);
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit();
            }
        }
        catch (InvalidOperationException) { }
        _process.Dispose();
    }

    /// <summary>Polls <paramref name="condition"/> until it holds or <paramref name="seconds"/> pass.</summary>
    public static bool WaitUntil(Func<bool> condition, int seconds = 60)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed.TotalSeconds > seconds) return false;
            Thread.Sleep(10);
        }
        return true;
    }

    /// <summary>
    /// The command line of <c>copa args</c>: the published tool named by COPA_EXE where there is no SDK
    /// (bench/gpu/run-on-gpu.sh sets it: its self-contained tests have no <c>dotnet</c> to run copa.dll),
    /// else copa.dll beside the tests under the <c>dotnet</c> host.
    /// </summary>
    private static string[] Copa(string[] args) =>
        Environment.GetEnvironmentVariable("COPA_EXE") is { Length: > 0 } exe
            ? [exe, .. args]
            : [Dotnet(), Path.Combine(AppContext.BaseDirectory, "copa.dll"), .. args];

    private static string Dotnet() =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet";

    private static CopaProcess Launch(string file, string[] args)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args) info.ArgumentList.Add(a);
        var process = Process.Start(info) ?? throw new InvalidOperationException($"{file} did not start");
        process.StandardInput.Close();
        return new CopaProcess(process);
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int signal);
}
