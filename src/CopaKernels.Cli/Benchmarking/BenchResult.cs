namespace CopaKernels.Cli.Benchmarking;

/// <summary>One measured operation: median wall time of the runs after warm-up, and its throughput.</summary>
/// <param name="Device">Backend name.</param>
/// <param name="Op">Operation id (select, select-batched, rowsums, product, convert, ...).</param>
/// <param name="Shape">Shape or size label.</param>
/// <param name="Ms">Median milliseconds.</param>
/// <param name="Throughput">GB/s (bytes moved) or GFLOP/s, per <paramref name="Unit"/>.</param>
/// <param name="Unit">"GB/s" or "GFLOP/s".</param>
/// <param name="Ratio">A side-by-side ratio measured in the same run, described by <paramref name="RatioOf"/>; null if none.</param>
/// <param name="RatioOf">What the ratio compares.</param>
/// <param name="TransferMs">
/// Device backends: median ms to copy the operation's inputs to the device and its result back, timed
/// on its own (not part of <paramref name="Ms"/>, which is kernel time with the data resident); null on the CPU.
/// </param>
/// <param name="VsCpu">CPU backend's median ms for the same operation and shape divided by this one's (speedup); null when not measured.</param>
public sealed record BenchResult(string Device, string Op, string Shape, double Ms, double Throughput, string Unit,
    double? Ratio, string? RatioOf, double? TransferMs = null, double? VsCpu = null);
