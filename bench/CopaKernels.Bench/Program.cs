using BenchmarkDotNet.Running;

namespace CopaKernels.Bench;

/// <summary>
/// BenchmarkDotNet entry point: <c>dotnet run -c Release --project bench/CopaKernels.Bench -- --filter '*'</c>.
/// Each benchmark class checks its result once before timing and reports throughput beside the time.
/// </summary>
public static class Program
{
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
}
