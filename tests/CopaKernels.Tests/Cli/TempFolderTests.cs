using CopaKernels.Formats;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Merge.Streaming;

namespace CopaKernels.Tests.Cli;

/// <summary>
/// The temporary folders beside OUT: what a run killed outright leaves is removed by the next merge
/// into the same folder, and a live run's is never touched.
/// </summary>
[Collection(ChildProcesses.Name)]
public sealed class TempFolderTests(SlowMergeFixture fx) : IClassFixture<SlowMergeFixture>
{
    private static bool Started(string parent) =>
        SlowMergeFixture.Owned(parent) is var owned && owned.Any(n => n.EndsWith(".tmp")) && owned.Any(n => n.EndsWith(".lock"));

    [Fact]
    public void KilledMerge_LeavesItsTempFolder_AndTheNextMergeIntoThatFolderRemovesIt()
    {
        var parent = fx.NewParent();
        var killed = Path.Combine(parent, "killed");
        using (var copa = CopaProcess.Start(fx.SlowMerge(killed)))
        {
            Assert.True(CopaProcess.WaitUntil(() => Started(parent) || copa.HasExited), "no temporary folder appeared");
            copa.Signal(CopaProcess.SigKill);
            var (code, _, err) = copa.Wait();
            Assert.True(code == 128 + CopaProcess.SigKill, $"exit {code}: {err}");
        }
        var left = SlowMergeFixture.Owned(parent);
        Assert.Equal(2, left.Length); // .copa-ID.lock and .copa-ID.tmp
        Assert.False(Directory.Exists(killed));

        var next = Path.Combine(parent, "next");
        var r = CliRunner.Run(fx.QuickMerge(next));
        Assert.True(r.Code == 0, r.Err);
        Assert.Empty(SlowMergeFixture.Owned(parent));
        Assert.True(File.Exists(Path.Combine(next, MergeReport.FileName)));
    }

    [Fact]
    public void LiveMerge_IsNotDisturbed_ByAnotherMergeIntoTheSameFolder()
    {
        var parent = fx.NewParent();
        var slow = Path.Combine(parent, "slow");
        using var copa = CopaProcess.Start(fx.SlowMerge(slow));
        Assert.True(CopaProcess.WaitUntil(() => Started(parent) || copa.HasExited), "no temporary folder appeared");
        var live = SlowMergeFixture.Owned(parent);
        Assert.False(copa.HasExited, "the slow merge ended before the quick one could start");

        var quick = Path.Combine(parent, "quick");
        var r = CliRunner.Run(fx.QuickMerge(quick));
        Assert.True(r.Code == 0, r.Err);
        if (!copa.HasExited) Assert.Equal(live, SlowMergeFixture.Owned(parent));

        var (code, _, err) = copa.Wait();
        Assert.True(code == 0, $"exit {code}: {err}");
        using var delta = ShardedModel.Open(slow);
        Assert.Equal(7 * SlowMergeFixture.Layers, delta.Names.Count);
        Assert.True(File.Exists(Path.Combine(slow, MergeReport.FileName)));
        Assert.Empty(SlowMergeFixture.Owned(parent));
    }

    [Fact]
    public void DeadLeftovers_AreRemoved_LockedOnesAndLookalikes_AreNot()
    {
        var parent = fx.NewParent();
        string Id() => Guid.NewGuid().ToString("N");
        // Dead: a folder with its unlocked lock file; a lock file alone (killed after the rename); a folder alone.
        var dead = Id();
        Directory.CreateDirectory(Path.Combine(parent, $".copa-{dead}.tmp", "sub"));
        File.WriteAllText(Path.Combine(parent, $".copa-{dead}.tmp", "sub", "part.safetensors"), "partial");
        File.WriteAllText(Path.Combine(parent, $".copa-{dead}.lock"), "");
        File.WriteAllText(Path.Combine(parent, $".copa-{Id()}.lock"), "");
        Directory.CreateDirectory(Path.Combine(parent, $".copa-{Id()}.tmp"));
        // Alive: its lock is held (by this process, through another open file, as flock counts it).
        var alive = Id();
        Directory.CreateDirectory(Path.Combine(parent, $".copa-{alive}.tmp"));
        using var held = new FileStream(Path.Combine(parent, $".copa-{alive}.lock"), FileMode.CreateNew, FileAccess.Write, FileShare.None);
        // Not ours: other names are never touched.
        Directory.CreateDirectory(Path.Combine(parent, ".copa-demo.tmp"));
        File.WriteAllText(Path.Combine(parent, ".copa-demo"), "");
        Directory.CreateDirectory(Path.Combine(parent, $".merged.{Id()}.tmp"));

        string[] kept = [".copa-demo", ".copa-demo.tmp", $".copa-{alive}.lock", $".copa-{alive}.tmp"];
        using (var folder = AtomicFolder.Create(Path.Combine(parent, "out")))
            Assert.Equal(kept.Length + 2, SlowMergeFixture.Owned(parent).Length); // and its own pair
        Assert.Equal(kept.Order(StringComparer.Ordinal), SlowMergeFixture.Owned(parent));
        Assert.Single(Directory.GetDirectories(parent, ".merged.*"));
    }

    [Fact]
    public void OutNameOf255Characters_IsAccepted()
    {
        var parent = fx.NewParent();
        var output = Path.Combine(parent, new string('m', 255));
        var r = CliRunner.Run(fx.QuickMerge(output));
        Assert.True(r.Code == 0, r.Err);
        Assert.True(File.Exists(Path.Combine(output, MergeReport.FileName)));
        Assert.Equal([Path.GetFileName(output)], Directory.GetFileSystemEntries(parent).Select(Path.GetFileName));
    }
}
