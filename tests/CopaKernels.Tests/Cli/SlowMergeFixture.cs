namespace CopaKernels.Tests.Cli;

/// <summary>
/// Inputs for a merge that lasts long enough to be signalled or killed half-way: three of the demo's
/// tiny adapters with 6 layers (2.6 MB, written once) merged with PCB in delta space on one thread,
/// which computes dense deltas for every module (about 5 s on a 2-core machine; the temporary folder
/// exists for the last 4). No hook in copa is needed, so the child process is the real tool.
/// </summary>
public sealed class SlowMergeFixture : IDisposable
{
    private readonly TempDir _dir = new();

    public SlowMergeFixture()
    {
        var demo = Path.Combine(_dir.Path, "demo");
        var (code, _, err) = CliRunner.Run("demo", "--dir", demo, "--generate-only", "--no-base", "--quiet", "--layers", Layers.ToString());
        Assert.True(code == 0, err);
        Adapters = Enumerable.Range(1, 3).Select(i => Path.Combine(demo, "adapters", $"task-{i}")).ToList();
    }

    /// <summary>Layers of the adapters, each with seven modules.</summary>
    public const int Layers = 6;

    public List<string> Adapters { get; }

    /// <summary>A fresh parent folder for outputs (the temporary folders appear in it).</summary>
    public string NewParent() => Directory.CreateDirectory(Path.Combine(_dir.Path, $"p-{Guid.NewGuid():N}")).FullName;

    /// <summary>Arguments of the slow merge into <paramref name="output"/>.</summary>
    public string[] SlowMerge(string output) => Merge(output, "--method", "pcb", "--space", "delta", "--output", "delta", "--threads", "1", "--no-sync");

    /// <summary>Arguments of a quick merge of the same adapters into <paramref name="output"/>.</summary>
    public string[] QuickMerge(string output) => Merge(output, "--method", "copa");

    /// <summary>The temporary folders (<c>.copa-ID.tmp</c>) and lock files (<c>.copa-ID.lock</c>) in <paramref name="parent"/>.</summary>
    public static string[] Owned(string parent) =>
        Directory.GetFileSystemEntries(parent, ".copa-*").Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;

    private string[] Merge(string output, params string[] method)
    {
        var args = new List<string> { "merge", "--out", output, "--quiet" };
        foreach (var a in Adapters) args.AddRange(["--adapter", a]);
        args.AddRange(method);
        return args.ToArray();
    }

    public void Dispose() => _dir.Dispose();
}
