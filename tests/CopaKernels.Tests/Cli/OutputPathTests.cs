using System.Diagnostics;
using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Merge.Streaming;
using CopaKernels.Tests.Merge;

namespace CopaKernels.Tests.Cli;

/// <summary>
/// Where <c>copa merge</c> writes: symbolic links cannot smuggle the output into an input, odd output
/// paths are usage errors (one line, exit 2), not crashes, a failed merge leaves no folder it created,
/// and a prepared empty output folder keeps its mode and owner.
/// </summary>
public sealed class OutputPathTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    private string[] Args(string output, IEnumerable<string>? adapters = null, params string[] extra)
    {
        var args = new List<string> { "merge", "--method", "copa", "--out", output, "--quiet" };
        foreach (var a in adapters ?? fx.Adapters) args.AddRange(["--adapter", a]);
        args.AddRange(extra);
        return args.ToArray();
    }

    private static void AssertRefused((int Code, string Out, string Err) r, params string[] fragments)
    {
        Assert.True(r.Code == 2, $"exit {r.Code}: {r.Err}");
        var line = Assert.Single(r.Err.Trim().Split('\n'));
        Assert.StartsWith("error: ", line);
        foreach (var f in fragments) Assert.Contains(f, line);
    }

    [Fact]
    public void OutThroughALinkToAnAdapter_IsRefused_AndTheAdapterIsUntouched()
    {
        using var dir = new TempDir();
        var link = Path.Combine(dir.Path, "lnk");
        Directory.CreateSymbolicLink(link, fx.Adapters[0]);
        var before = StreamingFixture.Fingerprint(fx.Adapters[0]);
        var output = Path.Combine(link, "merged");

        AssertRefused(CliRunner.Run(Args(output)), output, "must not be an input or lie inside one");
        AssertRefused(CliRunner.Run(Args(link)), link, "must not be an input or lie inside one");
        Assert.Equal(before, StreamingFixture.Fingerprint(fx.Adapters[0]));
        Assert.Empty(Directory.GetFileSystemEntries(fx.Adapters[0], ".*"));
    }

    [Fact]
    public void LinkedAdapterOrBase_ContainingTheOut_IsRefused()
    {
        using var dir = new TempDir();
        var adapterLink = Path.Combine(dir.Path, "adapter-link");
        var baseLink = Path.Combine(dir.Path, "base-link");
        Directory.CreateSymbolicLink(adapterLink, fx.Adapters[1]);
        Directory.CreateSymbolicLink(baseLink, fx.Base);

        var intoAdapter = Path.Combine(fx.Adapters[1], "merged");
        AssertRefused(CliRunner.Run(Args(intoAdapter, [fx.Adapters[0], adapterLink, fx.Adapters[2]])), intoAdapter, "lie inside one", adapterLink);
        var intoBase = Path.Combine(fx.Base, "merged");
        AssertRefused(CliRunner.Run(Args(intoBase, null, "--output", "model", "--base", baseLink)), intoBase, "lie inside one", baseLink);
        Assert.False(Directory.Exists(intoAdapter));
        Assert.False(Directory.Exists(intoBase));
    }

    [Fact]
    public void LinkInTheMiddleOfTheOut_WithAMissingTail_IsResolved()
    {
        using var dir = new TempDir();
        // dir/up -> the fixture's root; dir/up/adapter0/new/deeper/merged lies inside adapter0 though nothing below it exists yet.
        var up = Path.Combine(dir.Path, "up");
        Directory.CreateSymbolicLink(up, fx.Root);
        var output = Path.Combine(up, Path.GetFileName(fx.Adapters[0]), "new", "deeper", "merged");
        AssertRefused(CliRunner.Run(Args(output)), "lie inside one");
        Assert.False(Directory.Exists(Path.Combine(fx.Adapters[0], "new")));

        // A relative link whose target climbs out of the link's own folder: ../ applies to the target.
        var nested = Path.Combine(dir.Path, "a", "b");
        Directory.CreateDirectory(nested);
        var rel = Path.Combine(nested, "rel");
        Directory.CreateSymbolicLink(rel, Path.GetRelativePath(nested, fx.Adapters[2]));
        AssertRefused(CliRunner.Run(Args(Path.Combine(rel, "..", Path.GetFileName(fx.Adapters[2]), "merged"))), "lie inside one");
    }

    [Fact]
    public void OutAsALinkToAnEmptyFolder_FillsThatFolder_AndKeepsTheLink()
    {
        using var dir = new TempDir();
        var target = Path.Combine(dir.Path, "target");
        Directory.CreateDirectory(target);
        var link = Path.Combine(dir.Path, "out-link");
        Directory.CreateSymbolicLink(link, target);
        var r = CliRunner.Run(Args(link));
        Assert.True(r.Code == 0, r.Err);
        Assert.Equal(target, new FileInfo(link).LinkTarget);
        using var merged = LoraAdapter.Open(target);
        Assert.Equal(14, merged.Modules.Count);
    }

    [Theory]
    [InlineData("", "--out is empty")]
    [InlineData("/", "/: the output cannot be a root folder")]
    [InlineData("//", "//: the output cannot be a root folder")]
    public void EmptyOrRootOut_IsAUsageError(string output, string message) =>
        AssertRefused(CliRunner.Run(Args(output)), message);

    [Fact]
    public void EmptyDemoDir_IsAUsageError() =>
        AssertRefused(CliRunner.Run("demo", "--dir", "", "--quiet"), "--dir is empty");

    [Fact]
    public void DemoDirAsALinkToAnEarlierDemo_ReplacesThatDemo_AndKeepsTheLink()
    {
        using var dir = new TempDir();
        var target = Path.Combine(dir.Path, "demo");
        var link = Path.Combine(dir.Path, "demo-link");
        string[] demo = ["--generate-only", "--no-base", "--quiet", "--layers", "1"];
        Assert.Equal(0, CliRunner.Run(["demo", "--dir", target, "--adapters", "3", .. demo]).Code);
        Directory.CreateSymbolicLink(link, target);

        var r = CliRunner.Run(["demo", "--dir", link, "--adapters", "1", .. demo]);
        Assert.True(r.Code == 0, r.Err);
        Assert.Equal(target, new FileInfo(link).LinkTarget);
        Assert.Equal(["task-1"], Directory.GetDirectories(Path.Combine(target, "adapters")).Select(Path.GetFileName));
    }

    [Fact]
    public void RealPath_ResolvesEveryComponent_AndAppendsAMissingTail()
    {
        using var dir = new TempDir();
        var real = Path.Combine(dir.Path, "real");
        Directory.CreateDirectory(Path.Combine(real, "sub"));
        Directory.CreateSymbolicLink(Path.Combine(dir.Path, "abs"), Path.Combine(real, "sub"));
        Directory.CreateSymbolicLink(Path.Combine(real, "sub", "up"), "..");
        // abs -> real/sub; up -> .. (relative to real/sub) = real; then ../real/sub again, then a missing tail.
        var path = Path.Combine(dir.Path, "abs", "up", "..", "real", "sub", "x", "y");
        Assert.Equal(Path.Combine(real, "sub", "x", "y"), RealPath.Of(path));
        // A dangling link still says where it leads.
        Directory.CreateSymbolicLink(Path.Combine(dir.Path, "dangling"), Path.Combine(dir.Path, "nowhere", "n"));
        Assert.Equal(Path.Combine(dir.Path, "nowhere", "n", "m"), RealPath.Of(Path.Combine(dir.Path, "dangling", "m")));
        // A loop is an error, not a hang.
        Directory.CreateSymbolicLink(Path.Combine(dir.Path, "loop"), Path.Combine(dir.Path, "loop"));
        Assert.Throws<IOException>(() => RealPath.Of(Path.Combine(dir.Path, "loop", "x")));
        var r = CliRunner.Run(Args(Path.Combine(dir.Path, "loop", "x")));
        AssertRefused(r, "loop", "symbolic links");
    }

    [Fact]
    public void FailedMerge_RemovesTheParentFoldersItCreated_AndNoOther()
    {
        using var dir = new TempDir();
        var existing = Path.Combine(dir.Path, "existing");
        Directory.CreateDirectory(existing);
        var output = Path.Combine(existing, "new1", "new2", "out");
        MergeRunner.BeforeTensor = _ => throw new IOException("injected: disk full");
        try
        {
            var (code, _, err) = CliRunner.Run(Args(output));
            Assert.True(code == 1, err);
            Assert.Contains("injected: disk full", err);
        }
        finally { MergeRunner.BeforeTensor = null; }
        Assert.True(Directory.Exists(existing));
        Assert.Empty(Directory.GetFileSystemEntries(existing));
    }

    [Fact]
    public void EmptyOutThatIsAMountPoint_IsRefusedAtPlanTime()
    {
        // A rename cannot land on a mount point: before, the whole merge ran and then failed with exit 1.
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "volume");
        Directory.CreateDirectory(output);
        var args = new List<string> { "merge", "--method", "copa", "--out", output, "--quiet" };
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        using var copa = CopaProcess.StartWithMountPoint(output, args.ToArray());
        var (code, _, err) = copa.Wait();
        Assert.True(code == 2, $"exit {code}: {err}");
        Assert.Equal($"error: {output}: output folder is a mount point, which the finished output cannot be renamed onto; give a new folder inside it", err.Trim());
        Assert.Equal([output], Directory.GetFileSystemEntries(dir.Path)); // no temporary folder or lock beside it
    }

    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void ExistingEmptyOut_KeepsItsModeAndOwner()
    {
        using var dir = new TempDir();
        var output = Path.Combine(dir.Path, "prepared");
        Directory.CreateDirectory(output);
        // rwxr-s---: a group-shared folder whose new files take its group.
        File.SetUnixFileMode(output, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
            UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.SetGroup);
        if (Environment.IsPrivilegedProcess) Tool("chown", "65534:65534", output); // nobody:nogroup
        var before = Tool("stat", "-c", "%a %u %g", output);

        var r = CliRunner.Run(Args(output));
        Assert.True(r.Code == 0, r.Err);
        Assert.Equal(before, Tool("stat", "-c", "%a %u %g", output));
        using var merged = LoraAdapter.Open(output);
        Assert.Equal(14, merged.Modules.Count);
    }

    private static string Tool(string file, params string[] args)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) info.ArgumentList.Add(a);
        using var p = Process.Start(info)!;
        var stdout = p.StandardOutput.ReadToEnd();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(" ", args)}: {stderr}");
        return stdout.Trim();
    }
}
