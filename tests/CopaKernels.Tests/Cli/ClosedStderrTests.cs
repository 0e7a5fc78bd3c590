using CopaKernels.Tests.Merge;

namespace CopaKernels.Tests.Cli;

/// <summary>A merge's output and exit code do not depend on stderr being writable (<c>2&gt;&amp;-</c>).</summary>
[Collection(ChildProcesses.Name)]
public sealed class ClosedStderrTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    private string[] Args(string output, params string[] extra)
    {
        var args = new List<string> { "merge", "--method", "ties", "--out", output };
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        args.AddRange(extra);
        return args.ToArray();
    }

    [Fact]
    public void Merge_WithStderrClosed_Succeeds_WithTheSameOutput()
    {
        var reference = fx.NewOutput("reference");
        var r = CliRunner.Run(Args(reference, "--quiet"));
        Assert.True(r.Code == 0, r.Err);

        // Not quiet: the plan goes to stdout, progress lines to the closed stderr.
        var output = fx.NewOutput("closed");
        using var copa = CopaProcess.StartInShell("2>&-", Args(output));
        var (code, stdout, err) = copa.Wait();
        Assert.True(code == 0, $"exit {code}: {stdout}{err}");
        Assert.Contains("merged 14 modules", stdout);
        foreach (var name in new[] { "adapter_model.safetensors", "adapter_config.json" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(reference, name)), File.ReadAllBytes(Path.Combine(output, name)));
    }

    [Fact]
    public void BadInput_WithStderrClosed_StillExits2()
    {
        var output = fx.NewOutput("closed-bad");
        using var copa = CopaProcess.StartInShell("2>&-", Args(output, "--density", "7"));
        var (code, stdout, err) = copa.Wait();
        Assert.True(code == 2, $"exit {code}: {stdout}{err}");
        Assert.False(Directory.Exists(output));
    }
}

/// <summary>Tests that start copa processes run one at a time: each wants the 2 cores for itself.</summary>
[CollectionDefinition(Name)]
public sealed class ChildProcesses
{
    public const string Name = "child processes";
}
