using CopaKernels.Formats;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

namespace CopaKernels.Cli;

/// <summary>Turns a <c>--device</c> value into a backend.</summary>
internal static class Backends
{
    /// <summary>Creates the backend named by <paramref name="spec"/>: auto, cpu, cuda[:N], opencl[:N].</summary>
    public static IMergeBackend Create(string spec, int threads)
    {
        var s = spec.Trim().ToLowerInvariant();
        switch (s)
        {
            case "auto" or "cpu":
                return new CpuBackend(threads);
            default:
                if (s.StartsWith("cuda", StringComparison.Ordinal) || s.StartsWith("opencl", StringComparison.Ordinal))
                    throw new CopaInputException(null, null, $"device '{spec}': the ILGPU backends are not part of this build yet; use --device cpu");
                throw new CopaInputException(null, null, $"unknown device '{spec}' (expected auto, cpu, cuda, cuda:N, opencl, opencl:N)");
        }
    }
}
