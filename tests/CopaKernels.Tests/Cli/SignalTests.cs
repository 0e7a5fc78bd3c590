namespace CopaKernels.Tests.Cli;

/// <summary>
/// SIGINT, SIGTERM and SIGHUP stop a running merge cleanly: exit code 128 + the signal's number, no
/// temporary folder, no output, no parent folder it created. <c>copa demo</c> stops the same way.
/// </summary>
[Collection(ChildProcesses.Name)]
public sealed class SignalTests(SlowMergeFixture fx) : IClassFixture<SlowMergeFixture>
{
    [Theory]
    [InlineData(CopaProcess.SigInt, "SIGINT")]
    [InlineData(CopaProcess.SigTerm, "SIGTERM")]
    [InlineData(CopaProcess.SigHup, "SIGHUP")]
    public void Signal_StopsTheMerge_WithExit128PlusSignal_AndLeavesNothing(int signal, string name) =>
        StopsCleanly(fx, signal, name);

    /// <summary>Starts the slow merge, signals it once its temporary folder is there, and checks the clean stop.</summary>
    internal static void StopsCleanly(SlowMergeFixture fx, int signal, string name, params string[] extra)
    {
        var parent = fx.NewParent();
        var output = Path.Combine(parent, "made-for-it", "out");
        using var copa = CopaProcess.Start([.. fx.SlowMerge(output), .. extra]);
        Assert.True(CopaProcess.WaitUntil(() => Directory.Exists(Path.GetDirectoryName(output)) &&
            SlowMergeFixture.Owned(Path.GetDirectoryName(output)!).Any(n => n.EndsWith(".tmp")) || copa.HasExited), "no temporary folder appeared");
        copa.Signal(signal);
        var (code, _, err) = copa.Wait();

        Assert.True(code == 128 + signal, $"exit {code}: {err}");
        Assert.Equal($"error: interrupted by {name}", err.Trim());
        Assert.Empty(Directory.GetFileSystemEntries(parent));
    }

    [Fact]
    public void Signal_StopsTheDemo_AndRemovesItsUnfinishedFolder()
    {
        var parent = fx.NewParent();
        var demo = Path.Combine(parent, "made-for-it", "demo");
        // A 7B-shaped base (one layer) takes seconds to write; the signal comes as soon as the folder is marked.
        using var copa = CopaProcess.Start("demo", "--dir", demo, "--preset", "llama-7b", "--layers", "1", "--quiet");
        Assert.True(CopaProcess.WaitUntil(() => File.Exists(Path.Combine(demo, ".copa-demo")) || copa.HasExited), "the demo folder did not appear");
        copa.Signal(CopaProcess.SigHup);
        var (code, _, err) = copa.Wait();

        Assert.True(code == 128 + CopaProcess.SigHup, $"exit {code}: {err}");
        Assert.Equal("error: interrupted by SIGHUP", err.Trim());
        Assert.Empty(Directory.GetFileSystemEntries(parent));
    }
}

/// <summary>
/// The same stop with an OpenCL device in use: PoCL's LLVM installs its own handlers when the device is
/// opened; with .NET's registered after them, SIGHUP killed the process outright (temporary folder left).
/// </summary>
[Collection(ChildProcesses.Name)]
[CopaKernels.Tests.Kernels.RequiresOpenCl]
public sealed class OpenClSignalTests(SlowMergeFixture fx) : IClassFixture<SlowMergeFixture>
{
    [CopaKernels.Tests.Kernels.BackendTheory]
    [InlineData(CopaProcess.SigHup, "SIGHUP")]
    [InlineData(CopaProcess.SigTerm, "SIGTERM")]
    public void Signal_StopsAnOpenClMerge_WithExit128PlusSignal_AndLeavesNothing(int signal, string name) =>
        SignalTests.StopsCleanly(fx, signal, name, "--device", "opencl");
}
