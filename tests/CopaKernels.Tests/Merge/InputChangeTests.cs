using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Merge.Streaming;
using CopaKernels.Tests.Cli;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// An input rewritten or replaced while a merge reads it: the merge may have read bytes of both versions,
/// so it must fail (exit 2, one line naming the file) and leave nothing, instead of committing an output
/// that matches neither version.
/// </summary>
public sealed class InputChangeTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    /// <summary>Rewrites the last 16 bytes of a file in place (same size, same inode), as an editor or a copy over it would.</summary>
    private static void OverwriteInPlace(string path)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        var tail = new byte[16];
        f.Seek(-tail.Length, SeekOrigin.End);
        f.ReadExactly(tail);
        for (int i = 0; i < tail.Length; i++) tail[i] ^= 0x5A;
        f.Seek(-tail.Length, SeekOrigin.End);
        f.Write(tail);
    }

    /// <summary>Replaces a file by another one of the same content (a new inode), as a download or `mv` over it would.</summary>
    private static void Replace(string path)
    {
        var fresh = path + ".new";
        File.Copy(path, fresh);
        File.Move(fresh, path, overwrite: true);
    }

    private static (int Code, string Out, string Err) Merge(string output, List<string> adapters, string baseModel, string mode, Action change, int at)
    {
        var args = new List<string> { "merge", "--method", "copa", "--out", output, "--quiet", "--output", mode, "--base", baseModel };
        foreach (var a in adapters) args.AddRange(["--adapter", a]);
        int seen = 0;
        MergeRunner.BeforeTensor = _ => { if (++seen == at) change(); };
        try { return CliRunner.Run(args.ToArray()); }
        finally { MergeRunner.BeforeTensor = null; }
    }

    private static void AssertRefused((int Code, string Out, string Err) r, string output, string file, string change)
    {
        Assert.True(r.Code == 2, $"exit {r.Code}: {r.Err}");
        var line = Assert.Single(r.Err.Trim().Split('\n'));
        Assert.True(line.StartsWith($"error: {file}: input changed during the merge ({change}", StringComparison.Ordinal), line);
        Assert.False(Directory.Exists(output), "the output was committed");
        // Nothing beside it either: the parent the merge created for it is gone again, or holds no debris.
        var parent = Path.GetDirectoryName(output)!;
        Assert.False(Directory.Exists(parent) && Directory.EnumerateFileSystemEntries(parent).Any(), "debris beside the output");
    }

    [Theory]
    [InlineData("model", 5)]
    [InlineData("adapter", 3)]
    public void AdapterRewrittenInPlace_DuringTheMerge_IsAnError(string mode, int at)
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        var weights = Path.Combine(adapters[1], LoraAdapter.WeightsFileName);
        long size = new FileInfo(weights).Length;
        var output = Path.Combine(dir.Path, "out", "merged");
        AssertRefused(Merge(output, adapters, b, mode, () => OverwriteInPlace(weights), at), output, weights, "it was written to");
        Assert.Equal(size, new FileInfo(weights).Length);
    }

    [Fact]
    public void BaseShardRewrittenInPlace_DuringTheMerge_IsAnError()
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        var shard = Directory.GetFiles(b, "*.safetensors").Order(StringComparer.Ordinal).Last();
        var output = Path.Combine(dir.Path, "out", "merged");
        AssertRefused(Merge(output, adapters, b, "model", () => OverwriteInPlace(shard), 2), output, shard, "it was written to");
    }

    [Fact]
    public void AdapterReplaced_DuringTheMerge_IsAnError()
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        var weights = Path.Combine(adapters[0], LoraAdapter.WeightsFileName);
        var output = Path.Combine(dir.Path, "out", "merged");
        AssertRefused(Merge(output, adapters, b, "model", () => Replace(weights), 7), output, weights, "it was replaced by another file");
    }

    [Fact]
    public void ConfigRewritten_DuringTheMerge_IsAnError()
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        var config = Path.Combine(adapters[2], AdapterConfig.FileName);
        var output = Path.Combine(dir.Path, "out", "merged");
        AssertRefused(Merge(output, adapters, b, "adapter", () => File.AppendAllText(config, " "), 1), output, config, "its size changed");
    }

    [Fact]
    public void UnchangedInputs_StillMerge()
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        var output = Path.Combine(dir.Path, "out", "merged");
        var r = Merge(output, adapters, b, "model", () => { }, 1);
        Assert.True(r.Code == 0, r.Err);
        using var merged = ShardedModel.Open(output);
        Assert.NotEmpty(merged.Names);
    }
}
