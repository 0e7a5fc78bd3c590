using System.Text.Json.Nodes;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Tests.Cli;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// No output holds a NaN or Inf that its inputs did not: parameters that overflow F32 or the output dtype stop
/// the merge (exit 2, one line naming the output tensor and what multiplied it), an input that holds NaN or Inf
/// is named as the cause, and a base weight's own Inf is passed through unchanged.
/// </summary>
public sealed class NonFiniteOutputTests(StreamingFixture fx) : IClassFixture<StreamingFixture>
{
    private static (int Code, string Out, string Err) Merge(string output, IEnumerable<string> adapters, params string[] extra)
    {
        var args = new List<string> { "merge", "--out", output, "--quiet" };
        foreach (var a in adapters) args.AddRange(["--adapter", a]);
        args.AddRange(extra);
        return CliRunner.Run(args.ToArray());
    }

    private static string AssertRefused((int Code, string Out, string Err) r, string output, params string[] fragments)
    {
        Assert.True(r.Code == 2, $"exit {r.Code}: {r.Err}");
        var line = Assert.Single(r.Err.Trim().Split('\n'));
        Assert.StartsWith("error: ", line);
        foreach (var f in fragments) Assert.True(line.Contains(f, StringComparison.Ordinal), $"'{f}' not in: {line}");
        Assert.False(Directory.Exists(output), "an output was committed");
        // No temporary folder or lock beside it (the parent the merge created for it is gone again).
        var parent = Path.GetDirectoryName(output)!;
        Assert.False(Directory.Exists(parent) && Directory.EnumerateFileSystemEntries(parent, ".*").Any(), "debris beside the output");
        return line;
    }

    private static void SetLoraAlpha(string adapter, double alpha)
    {
        var config = Path.Combine(adapter, AdapterConfig.FileName);
        var json = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        json["lora_alpha"] = alpha;
        File.WriteAllText(config, json.ToJsonString());
    }

    /// <summary>The shard file of <paramref name="model"/> that holds <paramref name="tensor"/>.</summary>
    private static string ShardOf(string model, string tensor)
    {
        using var m = ShardedModel.Open(model);
        Assert.True(m.TryGet(tensor, out var f, out _), tensor);
        return f.Path;
    }

    public static TheoryData<string[], string[]> Overflows() => new()
    {
        // The cases: λ past F32 in an adapter (its B factor) and in a model (W + ΔW).
        { ["--method", "copa", "--lambda", "1e39"], ["lora_B.weight: merged values overflow BF16", "lambda 1e+39", "LoRA scales (lora_alpha / r) 2, 2, 2"] },
        { ["--method", "copa", "--lambda", "1e300", "--output", "model"], [".weight: merged values overflow BF16 (NaN or Inf at row", "lambda 1e+300"] },
        { ["--method", "copa-official", "--lambda", "1e39"], ["merged values overflow BF16", "lambda 1e+39"] },
        { ["--method", "copa", "--lambda", "1e39", "--out-dtype", "f32"], ["merged values overflow F32"] },
        { ["--method", "copa", "--lambda", "1e39", "--rank", "2"], ["merged values overflow F32", "lambda 1e+39"] },
        { ["--method", "copa", "--lambda", "1e39", "--output", "delta"], ["model.layers.0.mlp.down_proj.weight: merged values overflow F32"] },
        { ["--method", "task-arithmetic", "--weight", "1e300", "--weight", "1", "--weight", "1"], ["merged values overflow", "weights 1e+300, 1, 1"] },
        { ["--method", "task-arithmetic", "--weight", "1e300", "--weight", "1", "--weight", "1", "--output", "model"], ["merged values overflow BF16", "weights 1e+300, 1, 1"] },
        { ["--method", "task-arithmetic", "--space", "delta", "--weight", "1", "--weight", "1e39", "--weight", "1", "--output", "model"], ["merged values overflow BF16", "weights 1, 1e+39, 1"] },
        { ["--method", "ties", "--space", "delta", "--weight", "1", "--weight", "1e300", "--weight", "1", "--output", "delta"], ["merged values overflow F32", "weights 1, 1e+300, 1"] },
        { ["--method", "pcb", "--lambda", "1e39"], ["merged values overflow"] },
        // Finite in F32 and BF16, out of F16's range: the check is on the stored value.
        { ["--method", "copa", "--lambda", "1e9", "--output", "model", "--out-dtype", "f16"], ["merged values overflow F16"] },
    };

    [Theory]
    [MemberData(nameof(Overflows))]
    public void Overflow_IsAnError_NamingTheTensorAndTheParameters(string[] flags, string[] fragments)
    {
        var output = fx.NewOutput("overflow");
        AssertRefused(Merge(output, fx.Adapters, [.. flags, "--base", fx.Base]), output, [$"error: {output}: ", "though every input value is finite", .. fragments]);
    }

    [Theory]
    [InlineData("copa", "adapter")]
    [InlineData("copa", "model")]
    [InlineData("ties", "adapter")]
    public void LoraAlphaPastF32_IsAnOverflowError(string method, string mode)
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        SetLoraAlpha(adapters[1], 1e40);
        var output = Path.Combine(dir.Path, "out", "merged");
        var r = Merge(output, adapters, "--method", method, "--output", mode, "--base", b);
        if (method == "ties")
        {
            // Factor space: √(w·s) ≈ 5e19 on each side keeps every stored factor finite, and so is their product.
            Assert.True(r.Code == 0, r.Err);
            using var merged = LoraAdapter.Open(output);
            foreach (var m in merged.Modules)
                Assert.False(NonFinite.Any(merged.Weights.ReadSingles(m.A)) || NonFinite.Any(merged.Weights.ReadSingles(m.B)), m.Path);
            return;
        }
        AssertRefused(r, output, "merged values overflow", "LoRA scales (lora_alpha / r) 2, 2.5e+39, 2");
    }

    [Fact]
    public void TiesInDeltaSpace_NamesTheOverflowNotTheAdapter()
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        SetLoraAlpha(adapters[1], 1e40);
        var output = Path.Combine(dir.Path, "out", "merged");
        var line = AssertRefused(Merge(output, adapters, "--method", "ties", "--space", "delta", "--output", "model", "--base", b), output,
            $"error: {adapters[1]}: ", "ΔW = s·B·A of adapter 2 overflows F32 (LoRA scale 2.5e+39); its values are finite");
        Assert.DoesNotContain("holds NaN", line);
    }

    [Theory]
    [InlineData("task-arithmetic", "adapter")]
    [InlineData("task-arithmetic", "model")]
    [InlineData("pcb", "adapter")]
    [InlineData("copa", "adapter")]
    [InlineData("ties", "model")]
    public void InputHoldingNaN_IsNamed_NotCalledAnOverflow(string method, string mode)
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        var weights = Path.Combine(adapters[2], LoraAdapter.WeightsFileName);
        const string tensor = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
        StreamingFixture.Poke16(weights, tensor, 5, 0x7FC0);
        var output = Path.Combine(dir.Path, "out", "merged");
        var line = AssertRefused(Merge(output, adapters, "--method", method, "--output", mode, "--base", b), output, "NaN or Inf");
        Assert.DoesNotContain("overflow", line);
        Assert.True(line.StartsWith($"error: {weights}: ", StringComparison.Ordinal) || line.StartsWith($"error: {adapters[2]}", StringComparison.Ordinal), line);
    }

    [Fact]
    public void BaseWeightHoldingInf_IsPassedThrough_AndNothingElseBecomesNonFinite()
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        const string weight = "model.layers.0.self_attn.q_proj.weight";
        var shard = ShardOf(b, weight);
        StreamingFixture.Poke16(shard, weight, 7, 0x7F80); // +Inf in BF16
        var output = Path.Combine(dir.Path, "out", "merged");
        var r = Merge(output, adapters, "--method", "copa", "--output", "model", "--base", b);
        Assert.True(r.Code == 0, r.Err);
        var merged = StreamingFixture.Read(output, weight);
        Assert.True(float.IsPositiveInfinity(merged[7]));
        Assert.Equal(1, merged.Count(v => !float.IsFinite(v)));
    }

    [Fact]
    public void ConvertingAnUntouchedTensor_PastF16_IsAnError()
    {
        using var dir = new TempDir();
        var (b, adapters) = fx.CopyInputs(dir);
        const string tensor = "model.norm.weight";
        var shard = ShardOf(b, tensor);
        StreamingFixture.Poke16(shard, tensor, 3, FloatConversion.SingleToBf16(1e6f)); // finite in BF16, not in F16
        var output = Path.Combine(dir.Path, "out", "merged");
        AssertRefused(Merge(output, adapters, "--method", "copa", "--output", "model", "--base", b, "--out-dtype", "f16"), output,
            $"error: {shard}: {tensor}: does not fit F16", "--out-dtype f16");
    }
}
