using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// Finds NVIDIA's PTX assembler and runs it. Where: <c>$COPA_PTXAS</c> (a path; if set it must
/// exist), else the CI cache that <c>.ci/ptxas.sh</c> fills, else <c>ptxas</c> on PATH (a CUDA
/// toolkit). Without one, the ptxas tests are skipped, unless <c>REQUIRE_PTXAS=1</c> (CI), where
/// they fail: a CI machine that silently lost ptxas must not report green.
/// </summary>
internal static partial class Ptxas
{
    /// <summary>Where <c>.ci/ptxas.sh</c> puts it by default.</summary>
    public const string CachePath = "/var/cache/copakernels/cuda-ptxas/bin/ptxas";

    private static readonly Lazy<(string? Path, string Problem)> located = new(Locate);

    /// <summary>The ptxas to use, or null (see <see cref="Problem"/>).</summary>
    public static string? Path => located.Value.Path;

    /// <summary>Why no ptxas is available (empty when one is).</summary>
    public static string Problem => located.Value.Problem;

    /// <summary>True when CI demands ptxas (<c>REQUIRE_PTXAS=1</c>): absent means failure, not skip.</summary>
    public static bool Required => Environment.GetEnvironmentVariable("REQUIRE_PTXAS") == "1";

    /// <summary>The path, or a failure that says how to get one.</summary>
    public static string RequirePath() =>
        Path ?? throw new Xunit.Sdk.XunitException($"ptxas is required (REQUIRE_PTXAS=1) but not available: {Problem}. Run .ci/ptxas.sh, or set COPA_PTXAS to a ptxas binary.");

    private static (string?, string) Locate()
    {
        var fromEnv = Environment.GetEnvironmentVariable("COPA_PTXAS");
        if (!string.IsNullOrEmpty(fromEnv))
            return File.Exists(fromEnv) ? (fromEnv, "") : (null, $"COPA_PTXAS={fromEnv} does not exist");
        if (File.Exists(CachePath))
            return (CachePath, "");
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(System.IO.Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = System.IO.Path.Combine(dir, "ptxas");
            if (File.Exists(candidate))
                return (candidate, "");
        }
        return (null, $"COPA_PTXAS is not set, {CachePath} does not exist and there is no ptxas on PATH");
    }

    /// <summary>The result of one ptxas run.</summary>
    public sealed record Result(int ExitCode, string Output, long CubinBytes);

    /// <summary>
    /// Assembles <paramref name="ptxFile"/> for <paramref name="gpuName"/> (e.g. sm_90) into
    /// <paramref name="cubinFile"/>. Output is stdout and stderr together.
    /// </summary>
    public static Result Assemble(string ptxas, string ptxFile, string gpuName, string cubinFile)
    {
        var start = new ProcessStartInfo(ptxas)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { "--gpu-name", gpuName, "-o", cubinFile, ptxFile })
            start.ArgumentList.Add(arg);
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {ptxas}");
        // Read both streams concurrently so neither pipe can fill up and block ptxas.
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"ptxas did not finish within 2 minutes on {ptxFile}");
        }
        var output = (stdout.Result + stderr.Result).Trim();
        long size = File.Exists(cubinFile) ? new FileInfo(cubinFile).Length : 0;
        return new Result(process.ExitCode, output, size);
    }

    /// <summary>
    /// ptxas's message, followed by the PTX lines it names ("file.ptx, line 42; error : ..."), so a
    /// failing test shows the offending instruction without re-running anything.
    /// </summary>
    public static string Explain(Result result, string ptx)
    {
        var text = new StringBuilder(result.Output);
        var lines = ptx.Split('\n');
        var cited = LineReference().Matches(result.Output).Select(m => int.Parse(m.Groups[1].Value)).Distinct().Take(10);
        foreach (int n in cited)
        {
            text.Append('\n').Append($"--- PTX around line {n} ---");
            for (int i = Math.Max(1, n - 2); i <= Math.Min(lines.Length, n + 2); i++)
                text.Append('\n').Append(i == n ? ">> " : "   ").Append(i).Append(": ").Append(lines[i - 1].TrimEnd('\r'));
        }
        return text.ToString();
    }

    [GeneratedRegex(@"line (\d+);")]
    private static partial Regex LineReference();
}

/// <summary>
/// A theory that is skipped, with the reason, when no ptxas is available, except under
/// <c>REQUIRE_PTXAS=1</c>, where it runs and fails. xunit 2 has no runtime skip, so the decision is
/// made when the test is discovered.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
internal sealed class PtxasTheoryAttribute : TheoryAttribute
{
    public PtxasTheoryAttribute()
    {
        if (Ptxas.Path is null && !Ptxas.Required)
            Skip = $"no ptxas: {Ptxas.Problem} (run .ci/ptxas.sh; REQUIRE_PTXAS=1 makes this a failure)";
    }
}

/// <summary>The <see cref="FactAttribute"/> counterpart of <see cref="PtxasTheoryAttribute"/>.</summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
internal sealed class PtxasFactAttribute : FactAttribute
{
    public PtxasFactAttribute()
    {
        if (Ptxas.Path is null && !Ptxas.Required)
            Skip = $"no ptxas: {Ptxas.Problem} (run .ci/ptxas.sh; REQUIRE_PTXAS=1 makes this a failure)";
    }
}
