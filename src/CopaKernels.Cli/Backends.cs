using CopaKernels.Formats;
using CopaKernels.Gpu;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Cli;

/// <summary>Turns a <c>--device</c> value into a backend.</summary>
internal static class Backends
{
    /// <summary>
    /// Creates the backend named by <paramref name="spec"/>: cpu, cuda[:N], opencl[:N], or auto (the first
    /// CUDA device, else the first OpenCL GPU, else the SIMD CPU backend). An absent or unusable device is
    /// a <see cref="CopaInputException"/> that names what was found.
    /// </summary>
    public static IMergeBackend Create(string spec, int threads)
    {
        var s = spec.Trim().ToLowerInvariant();
        if (s == "cpu") return new CpuBackend(threads);
        if (s == "auto") return (IMergeBackend?)TryOpen(IlgpuDevices.OpenAuto) ?? new CpuBackend(threads);
        bool cuda = s == "cuda" || (s.StartsWith("cuda:", StringComparison.Ordinal) && IsIndex(s[5..]));
        bool opencl = s == "opencl" || (s.StartsWith("opencl:", StringComparison.Ordinal) && IsIndex(s[7..]));
        if (!cuda && !opencl)
            throw new CopaInputException(null, null, $"unknown device '{spec}' (expected auto, cpu, cuda, cuda:N, opencl, opencl:N)");
        try
        {
            return IlgpuDevices.Open(s);
        }
        catch (InvalidOperationException e)
        {
            throw new CopaInputException(null, null, $"device '{spec}': {e.Message}");
        }
    }

    private static bool IsIndex(string s) => s.Length > 0 && s.All(char.IsAsciiDigit);

    // auto never fails on a device problem: it falls back to the CPU backend.
    private static IlgpuBackend? TryOpen(Func<IlgpuBackend?> open)
    {
        try
        {
            return open();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return null;
        }
    }
}
