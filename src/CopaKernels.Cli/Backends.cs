using CopaKernels.Gpu;
using CopaKernels.Kernels;

namespace CopaKernels.Cli;

/// <summary>Turns a <c>--device</c> value into a backend (the library's <see cref="MergeDevices"/>).</summary>
internal static class Backends
{
    /// <summary>The backend named by <paramref name="spec"/>; see <see cref="MergeDevices.Open"/>.</summary>
    public static IMergeBackend Create(string spec, int threads) => MergeDevices.Open(spec, threads);
}
