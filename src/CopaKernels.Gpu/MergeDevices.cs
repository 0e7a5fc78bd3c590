using CopaKernels.Formats;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Gpu;

/// <summary>Opens a merge backend by name, as <c>copa --device</c> does, for a program that embeds the merge.</summary>
public static class MergeDevices
{
    /// <summary>The names <see cref="Open"/> takes.</summary>
    public const string Names = "auto, cpu, cuda, cuda:N, opencl, opencl:N";

    /// <summary>
    /// The backend named <paramref name="name"/> (any case): <c>cpu</c> (the SIMD CPU backend with
    /// <paramref name="threads"/> threads, 0 = every core), <c>cuda[:N]</c>, <c>opencl[:N]</c>, or <c>auto</c>:
    /// the first CUDA device, else the first OpenCL GPU, else the CPU backend. An unknown name, or a device
    /// that is absent or unusable, is a <see cref="CopaInputException"/> that says what was found; <c>auto</c>
    /// never fails on a device problem.
    /// </summary>
    public static IMergeBackend Open(string name, int threads = 0)
    {
        ArgumentNullException.ThrowIfNull(name);
        var s = name.Trim().ToLowerInvariant();
        if (s == "cpu") return new CpuBackend(threads);
        if (s == "auto") return (IMergeBackend?)TryOpenAuto() ?? new CpuBackend(threads);
        bool cuda = s == "cuda" || (s.StartsWith("cuda:", StringComparison.Ordinal) && IsIndex(s[5..]));
        bool opencl = s == "opencl" || (s.StartsWith("opencl:", StringComparison.Ordinal) && IsIndex(s[7..]));
        if (!cuda && !opencl)
            throw new CopaInputException(null, null, $"unknown device '{name}' (expected {Names})");
        try
        {
            return IlgpuDevices.Open(s);
        }
        catch (InvalidOperationException e)
        {
            throw new CopaInputException(null, null, $"device '{name}': {e.Message}");
        }
    }

    private static bool IsIndex(string s) => s.Length > 0 && s.All(char.IsAsciiDigit);

    private static IlgpuBackend? TryOpenAuto()
    {
        try
        {
            return IlgpuDevices.OpenAuto();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return null;
        }
    }
}
