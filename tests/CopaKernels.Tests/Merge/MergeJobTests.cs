using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Gpu;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;
using CopaKernels.Merge.Streaming;
using CopaKernels.Tests.Cli;

namespace CopaKernels.Tests.Merge;

/// <summary>The one-call merge of the library (<see cref="MergeJob"/>) and device selection by name (<see cref="MergeDevices"/>).</summary>
public sealed class MergeJobTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    private sealed class Counting : IMergeProgress
    {
        public long Total, Bytes;
        public int Tensors, Done;

        public void Start(long totalBytes, int tensors) => (Total, Tensors) = (totalBytes, tensors);

        public void Advance(long bytes, string? tensorDone)
        {
            Bytes += bytes;
            if (tensorDone != null) Done++;
        }
    }

    private MergeRequest Request(string output) => new()
    {
        Options = new MergeOptions { Method = "ties", Weights = [1, 0.5, 2] },
        Adapters = fx.Adapters,
        Output = output,
        Mode = OutputMode.Model,
        Base = fx.Base,
    };

    [Fact]
    public void PlanThenRun_WritesWhatTheCliWrites_AndReportsProgress()
    {
        var viaJob = fx.NewOutput("job");
        var progress = new Counting();
        MergeReport report;
        using (var job = MergeJob.Plan(Request(viaJob)))
        {
            Assert.True(job.PlanTime > TimeSpan.Zero);
            Assert.Equal(14, job.Planned.Modules.Count);
            using var backend = MergeDevices.Open("CPU", threads: 2);
            report = job.Run(backend, progress);
            Assert.Throws<InvalidOperationException>(() => job.Run(backend));
        }
        Assert.Equal(progress.Total, progress.Bytes);
        Assert.Equal(progress.Tensors, progress.Done);
        Assert.Equal("ties", report.Method);
        Assert.True(report.TimingsSeconds["plan"] > 0);

        var viaCli = fx.NewOutput("cli");
        var args = new List<string> { "merge", "--method", "ties", "--weight", "1", "--weight", "0.5", "--weight", "2", "--output", "model",
            "--base", fx.Base, "--out", viaCli, "--quiet", "--device", "cpu" };
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        var (code, _, err) = CliRunner.Run(args.ToArray());
        Assert.True(code == 0, err);
        foreach (var f in Directory.GetFiles(viaCli, "*.safetensors"))
            StreamingFixture.AssertSameTensorBytes(f, Path.Combine(viaJob, Path.GetFileName(f)));
    }

    [Fact]
    public void ConfigFile_GivesTheRequestTheCliReadsFromIt()
    {
        using var dir = new TempDir();
        var yaml = Path.Combine(dir.Path, "merge.yaml");
        File.WriteAllText(yaml, "method: dare_ties\nseed: 3\ndensity: 0.3\noutput: delta\nout: from-config\nadapters:\n"
            + string.Concat(fx.Adapters.Select((a, i) => $"  - path: {a}\n    weight: {1 + i}\n")));
        var config = MergeConfig.Load(yaml);
        var request = config.ToRequest();
        Assert.Equal(Path.Combine(dir.Path, "from-config"), request.Output);
        Assert.Equal(OutputMode.Delta, request.Mode);
        Assert.Equal([1.0, 2.0, 3.0], request.Options.Weights);
        using (var job = MergeJob.Plan(request))
        using (var backend = new CpuBackend())
            job.Run(backend);

        var viaCli = Path.Combine(dir.Path, "via-cli");
        var (code, _, err) = CliRunner.Run("merge", yaml, viaCli, "--quiet");
        Assert.True(code == 0, err);
        foreach (var f in Directory.GetFiles(viaCli, "*.safetensors"))
            StreamingFixture.AssertSameTensorBytes(f, Path.Combine(dir.Path, "from-config", Path.GetFileName(f)));

        File.WriteAllText(yaml, "method: ties\nspace: dense\nout: x\n");
        var e = Assert.Throws<CopaInputException>(() => MergeConfig.Load(yaml).ToRequest());
        Assert.Equal(yaml, e.FilePath);
        Assert.Contains("line 2: space 'dense' must be factors or delta", e.Message);
    }

    [Fact]
    public void Cancelled_LeavesNoOutput()
    {
        var output = fx.NewOutput("job-cancelled");
        using var job = MergeJob.Plan(Request(output));
        using var backend = new CpuBackend();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => job.Run(backend, null, cts.Token));
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void LibraryErrors_NameSettings_NotFlags_AndTheCliShowsTheFlags()
    {
        var output = fx.NewOutput("no-base");
        var e = Assert.Throws<CopaInputException>(() => MergeJob.Plan(Request(output) with { Base = null }));
        Assert.Equal("model output needs `base` (the base model's folder, index or file)", e.Message);
        Assert.DoesNotContain("--", e.Message);
        var p = Assert.Throws<ParameterException>(() => MergeJob.Plan(Request(output) with { Options = new MergeOptions { Method = "ties", Clamp = 0.1 } }));
        Assert.StartsWith("method ties does not use `clamp`", p.Message);
        var args = new List<string> { "merge", "--method", "ties", "--output", "model", "--out", output };
        foreach (var a in fx.Adapters) args.AddRange(["--adapter", a]);
        var (code, _, err) = CliRunner.Run(args.ToArray());
        Assert.Equal(2, code);
        Assert.Equal("error: model output needs --base (the base model's folder, index or file)", err.Trim());
    }

    [Theory]
    [InlineData("gpu", "unknown device 'gpu'")]
    [InlineData("cuda:x", "unknown device 'cuda:x'")]
    public void UnknownDevice_IsAnInputError(string name, string reason)
    {
        var e = Assert.Throws<CopaInputException>(() => MergeDevices.Open(name));
        Assert.Contains(reason, e.Message);
        Assert.Contains(MergeDevices.Names, e.Message);
    }

    [Fact]
    public void Auto_AlwaysGivesABackend()
    {
        using var backend = MergeDevices.Open("auto", threads: 1);
        Assert.False(string.IsNullOrEmpty(backend.Name));
    }
}
