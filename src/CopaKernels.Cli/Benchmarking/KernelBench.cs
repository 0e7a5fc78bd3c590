using System.Diagnostics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;

namespace CopaKernels.Cli.Benchmarking;

/// <summary>
/// The quick Stopwatch benchmark behind <c>copa bench</c>: the kernel families at realistic shapes on
/// one backend, each checked once before timing, warm-up first, then the median of several runs.
/// Ratios compare operations measured side by side in the same run (the machines are shared).
/// </summary>
public sealed class KernelBench(IMergeBackend backend, bool quick, Action<BenchResult> report,
    IReadOnlyDictionary<(string Op, string Shape), double>? cpuMs = null)
{
    private bool OnDevice => backend.Kind != BackendKind.Cpu;

    /// <summary>Reports <paramref name="r"/> with its transfer time and its speedup over the CPU backend, when known.</summary>
    private void Report(BenchResult r, double? transferMs = null) =>
        report(r with
        {
            TransferMs = OnDevice ? transferMs : null,
            VsCpu = OnDevice && cpuMs != null && cpuMs.TryGetValue((r.Op, r.Shape), out var c) ? c / r.Ms : null,
        });

    /// <summary>Median ms of copying <paramref name="upBytes"/> to the device and <paramref name="downBytes"/> back.</summary>
    private double? Transfer(long upBytes, long downBytes)
    {
        if (!OnDevice) return null;
        var host = new byte[Math.Max(upBytes, downBytes)];
        using var buf = backend.Allocate(Math.Max(1, Math.Max(upBytes, downBytes)));
        return Time(() =>
        {
            if (upBytes > 0) backend.Upload(host.AsSpan(0, (int)upBytes), buf, 0);
            if (downBytes > 0) backend.Download(buf, 0, host.AsSpan(0, (int)downBytes));
        });
    }

    /// <summary>Every operation id, in run order.</summary>
    public static readonly string[] AllOps = ["select", "select-bf16", "select-batched", "rowsums", "product", "tiles", "convert"];

    private int Runs => quick ? 3 : 7;

    /// <summary>Runs the chosen operations.</summary>
    public void Run(IReadOnlyCollection<string> ops)
    {
        if (ops.Contains("select")) Select();
        if (ops.Contains("select-bf16") && !OnDevice) SelectBf16();
        if (ops.Contains("select-batched")) SelectBatched();
        if (ops.Contains("rowsums")) RowSums();
        if (ops.Contains("product")) Product();
        if (ops.Contains("tiles")) Tiles();
        if (ops.Contains("convert")) Convert();
    }

    /// <summary>Weight-like data: N(0, 0.02²), seeded (the demo's generator).</summary>
    private static float[] Gaussian(long n, int seed) => Demo.SyntheticModel.Gaussian(checked((int)n), 0.02f, (ulong)seed);

    /// <summary>
    /// Median ms of <paramref name="timed"/>, calling <paramref name="setup"/> (untimed) before each run
    /// (a single run after a single warm-up call when one call takes over a second).
    /// Warm-up runs for at least 0.5 s (and two calls): the tiered JIT only starts counting calls after
    /// 100 ms without new methods, so a short warm-up would time unoptimised code. Then at least
    /// <see cref="Runs"/> timed runs, more for short operations (up to 0.5 s).
    /// </summary>
    private double Time(Action timed, Action? setup = null)
    {
        var warm = Stopwatch.StartNew();
        setup?.Invoke();
        timed();
        backend.Synchronize();
        // A device that needs over a second per call (e.g. PoCL emulating a GPU on CPU cores) gets one
        // warm-up call and one timed call, so the bench still ends in minutes there.
        bool slow = warm.Elapsed.TotalSeconds > 1;
        for (int i = 1; !slow && (i < 2 || warm.Elapsed.TotalSeconds < 0.5); i++)
        {
            setup?.Invoke();
            timed();
            // Device launches return at once: without this wait the warm-up would only queue work
            // (thousands of launches in 0.5 s) and the first timed run would wait for all of it.
            backend.Synchronize();
        }
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (times.Count < (slow ? 1 : Runs) || (!slow && times.Count < 200 && total.Elapsed.TotalSeconds < 0.5))
        {
            setup?.Invoke();
            var sw = Stopwatch.StartNew();
            timed();
            backend.Synchronize();
            times.Add(sw.Elapsed.TotalMilliseconds);
        }
        return Median(times);
    }

    /// <summary>
    /// Two operations run alternately, each run of either after an untimed <paramref name="setup"/> (so both
    /// start from the same cache state) and waited for on the device, after a warm-up of both (two pairs and
    /// 0.5 s at least): the median ms of each and the median of the per-pair ratios y/x, which load changing
    /// during the measurement (memory speed moves by 2× within minutes on a shared VM) moves far less than a
    /// ratio of medians taken apart. At least <see cref="Runs"/> pairs, more within 1 s.
    /// </summary>
    private (double X, double Y, double Ratio) TimeAlternately(Action x, Action y, Action? setup = null)
    {
        double Run(Action a)
        {
            setup?.Invoke();
            var sw = Stopwatch.StartNew();
            a();
            backend.Synchronize();
            return sw.Elapsed.TotalMilliseconds;
        }
        var warm = Stopwatch.StartNew();
        for (int i = 0; i < 2 || warm.Elapsed.TotalSeconds < 0.5; i++)
        {
            Run(x);
            Run(y);
        }
        var tx = new List<double>();
        var ty = new List<double>();
        var ratio = new List<double>();
        var total = Stopwatch.StartNew();
        while (tx.Count < Runs || (tx.Count < 100 && total.Elapsed.TotalSeconds < 1))
        {
            tx.Add(Run(x));
            ty.Add(Run(y));
            ratio.Add(ty[^1] / tx[^1]);
        }
        return (Median(tx), Median(ty), Median(ratio));
    }

    private static double Median(List<double> xs)
    {
        xs.Sort();
        return xs[xs.Count / 2];
    }

    private KernelBuffer Upload(float[] data)
    {
        var b = backend.Allocate((long)data.Length * 4);
        backend.Upload(MemoryMarshal.AsBytes(data.AsSpan()), b, 0);
        return b;
    }

    private void Select()
    {
        var shapes = new List<(string, long)> { ("16×4096", 16 * 4096), ("4096×16", 4096 * 16), ("14336×16", 14336 * 16), ("1M", 1 << 20), ("16M", 16 << 20) };
        if (!quick) shapes.Add(("64M", 64 << 20));
        Select(shapes);
    }

    /// <summary>The select op over the given shapes (labels and element counts); tests pass small ones.</summary>
    internal void Select(IEnumerable<(string Label, long N)> shapes)
    {
        foreach (var (label, n) in shapes)
        {
            var data = Gaussian(n, 1);
            // On the CPU the tensor is a host array the backend wraps, so that the reference pass below
            // (SumOfMagnitudes) reads the very same memory.
            var host = backend as Kernels.Cpu.CpuBackend;
            var array = host != null ? (float[])data.Clone() : null;
            using var buf = host != null ? host.Wrap(array!) : Upload(data);
            Action restore = array != null ? () => data.CopyTo(array, 0) : () => backend.Upload(MemoryMarshal.AsBytes(data.AsSpan()), buf, 0);
            // Check once against the scalar reference before timing (smaller shapes only: the reference sorts).
            if (n <= 1 << 20)
            {
                var expect = (float[])data.Clone();
                var want = Kernels.Reference.ReferenceMagnitudeSelection.Select(expect, 0.2);
                var got = backend.SelectByMagnitude(buf, new TensorRange(0, n), 0.2);
                if (want != got) throw new InvalidOperationException($"select {label}: expected {want}, got {got}");
                restore(); // the check masked it
            }
            // Threshold only: one read pass, non-destructive (compare with torch.kthvalue); then threshold
            // and in-place mask (the full trim), the tensor restored before each run.
            Action threshold = () => backend.SelectByMagnitude(buf, new TensorRange(0, n), 0.2, applyMask: false);
            Action trim = () => backend.SelectByMagnitude(buf, new TensorRange(0, n), 0.2);
            var transfer = Transfer(n * 4, n * 4);
            if (array == null)
            {
                double only = Time(threshold), ms = Time(trim, restore);
                Report(new BenchResult(backend.Name, "select-threshold", label, only, n * 4.0 / only / 1e6, "GB/s", null, null), transfer);
                Report(new BenchResult(backend.Name, "select", label, ms, n * 4.0 / ms / 1e6, "GB/s", null, null), transfer);
                continue;
            }
            // On the CPU, each against one SumOfMagnitudes pass over the same tensor, timed alternately, and
            // each of the two after the same untimed step: the trim restores the tensor before each run, so the
            // SumOfMagnitudes run beside it gets the same restore first and starts from the same cache state.
            Action floor = () => TensorPrimitives.SumOfMagnitudes(array);
            const string of = "× SumOfMagnitudes";
            var a = TimeAlternately(floor, threshold);
            var b = TimeAlternately(floor, trim, restore);
            Report(new BenchResult(backend.Name, "select-threshold", label, a.Y, n * 4.0 / a.Y / 1e6, "GB/s", a.Ratio, of), transfer);
            Report(new BenchResult(backend.Name, "select", label, b.Y, n * 4.0 / b.Y / 1e6, "GB/s", b.Ratio, of), transfer);
        }
    }

    /// <summary>
    /// Family 1 on BF16 storage (what a merge of BF16 adapters trims, <c>HostKernels</c> on one thread)
    /// against the F32 path on the same values widened, side by side: LoRA factor shapes and 1M.
    /// </summary>
    private void SelectBf16()
    {
        foreach (var (label, n) in new[] { ("16×4096", 16 * 4096), ("4096×16", 4096 * 16), ("14336×16", 14336 * 16), ("1M", 1 << 20) })
        {
            var bits = new ushort[n];
            FloatConversion.SingleToBf16(Gaussian(n, 3), bits);
            var widened = new float[n];
            FloatConversion.Bf16ToSingle(bits, widened);
            var want = Kernels.Reference.ReferenceMagnitudeSelection.Select((float[])widened.Clone(), 0.2);
            var got = Kernels.Cpu.HostKernels.SelectByMagnitude((ushort[])bits.Clone(), DType.BF16, 0.2);
            if (want != got) throw new InvalidOperationException($"select-bf16 {label}: expected {want}, got {got}");
            double f32 = Time(() => Kernels.Cpu.HostKernels.SelectByMagnitude(widened, 0.2, applyMask: false));
            double bf16 = Time(() => Kernels.Cpu.HostKernels.SelectByMagnitude(bits, DType.BF16, 0.2, applyMask: false));
            Report(new BenchResult(backend.Name, "select-threshold-bf16", label, bf16, n * 2.0 / bf16 / 1e6, "GB/s", bf16 / f32, "× the F32 path, 1 thread"));
        }
    }

    /// <summary>A LoRA factor set of a 32-layer Llama-7B-like model, 7 projections: 224 A's and 224 B's.</summary>
    private void SelectBatched()
    {
        var sizes = new List<long>();
        int layers = quick ? 8 : 32;
        for (int l = 0; l < layers; l++)
        {
            foreach (var (dOut, dIn) in new[] { (4096, 4096), (4096, 4096), (4096, 4096), (4096, 4096), (11008, 4096), (11008, 4096), (4096, 11008) })
            {
                sizes.Add(16L * dIn);  // A: r × d_in
                sizes.Add(dOut * 16L); // B: d_out × r
            }
        }
        long total = sizes.Sum();
        var data = Gaussian(total, 2);
        using var buf = Upload(data);
        var ranges = new TensorRange[sizes.Count];
        long off = 0;
        for (int i = 0; i < sizes.Count; i++) { ranges[i] = new TensorRange(off, sizes[i]); off += sizes[i]; }
        var results = new SelectionResult[sizes.Count];
        double ms = Time(() => backend.SelectByMagnitudeBatched(buf, ranges, 0.2, results), () => backend.Upload(MemoryMarshal.AsBytes(data.AsSpan()), buf, 0));
        // The same number of elements as one tensor, side by side.
        double single = Time(() => backend.SelectByMagnitude(buf, new TensorRange(0, total), 0.2), () => backend.Upload(MemoryMarshal.AsBytes(data.AsSpan()), buf, 0));
        Report(new BenchResult(backend.Name, "select-batched", $"{sizes.Count} factors, {total / 1e6:0.#}M", ms, total * 4.0 / ms / 1e6, "GB/s",
            single / ms, "of one-tensor throughput"), Transfer(total * 4, total * 4));
    }

    private void RowSums()
    {
        foreach (var (rows, cols) in new[] { (16, 4096), (16, 14336), (128, 4096) })
        {
            int count = quick ? 64 : 224;
            var data = Gaussian((long)rows * cols * count, 3);
            using var buf = Upload(data);
            using var sums = backend.Allocate(rows * 4L);
            using var masked = backend.Allocate(rows * 4L);
            double ms = Time(() =>
            {
                for (int i = 0; i < count; i++)
                    backend.RowAbsSums(new MatrixView(buf, (long)i * rows * cols, rows, cols), new BufferView(sums, 0), new RowThreshold(0.01f, new BufferView(masked, 0)));
            });
            Report(new BenchResult(backend.Name, "rowsums", $"{count}× {rows}×{cols} masked", ms, data.Length * 4.0 / ms / 1e6, "GB/s", null, null),
                Transfer(data.Length * 4L, 2L * rows * 4));
        }
    }

    private void Product()
    {
        foreach (int dOut in new[] { 4096, 14336 })
            foreach (int r in new[] { 16, 64, 128 })
            {
                if (quick && dOut == 14336 && r != 16) continue;
                const int dIn = 4096;
                using var b = Upload(Gaussian((long)dOut * r, 4));
                using var a = Upload(Gaussian((long)r * dIn, 5));
                using var o = backend.Allocate((long)dOut * dIn * 4);
                LowRankTerm[] terms = [new LowRankTerm(b, 0, a, 0, r, 2f)];
                var tile = new ProductTile(0, dOut, o);
                double ms = Time(() => backend.LowRankProduct(terms, dOut, dIn, tile));
                double flops = 2.0 * dOut * r * dIn;
                Report(new BenchResult(backend.Name, "product", $"{dOut}×{r}×{dIn}", ms, flops / ms / 1e6, "GFLOP/s", null, null),
                    Transfer(((long)dOut * r + (long)r * dIn) * 4, (long)dOut * dIn * 4));
            }
    }

    /// <summary>
    /// W + ΔW of one weight in row tiles, BF16 in and out (what <c>copa merge --output model</c> does per
    /// weight), with the host's share of each tile: copying the base tile in (a read from the page cache) and
    /// the result out (the hand-off to the writer). Timed twice in the same run: blocking (Upload, product,
    /// Download per tile, the host idle while the device works) and queued (TileWriter's schedule: the upload,
    /// product and download of tile t queued while the host copies tile t−1 out and tile t+1 in). The ratio is
    /// blocking ÷ queued: how much of the transfers and host work the queue hides.
    /// </summary>
    private void Tiles()
    {
        const int dIn = 4096, r = 16, tileRows = 512;
        foreach (int dOut in quick ? new[] { 4096 } : new[] { 4096, 11008 })
        {
            int tiles = (dOut + tileRows - 1) / tileRows;
            long tileBytes = (long)tileRows * dIn * 2;
            var source = new ushort[(long)dOut * dIn];
            FloatConversion.SingleToBf16(Gaussian(source.LongLength, 7), source);
            var bytesIn = MemoryMarshal.AsBytes(source.AsSpan());
            var blockingOut = new byte[bytesIn.Length];
            var queuedOut = new byte[bytesIn.Length];
            using var b = Upload(Gaussian((long)dOut * r, 8));
            using var a = Upload(Gaussian((long)r * dIn, 9));
            using var baseBuf = backend.Allocate(tileBytes);
            using var outBuf = backend.Allocate(tileBytes);
            LowRankTerm[] terms = [new LowRankTerm(b, 0, a, 0, r, 2f)];
            ProductTile Tile(int t) => new(t * tileRows, Math.Min(tileRows, dOut - t * tileRows), outBuf, 0, DType.BF16, baseBuf, 0, DType.BF16);
            int Bytes(int t) => Math.Min(tileRows, dOut - t * tileRows) * dIn * 2;
            // Two of each on the host in both schedules (the blocking TileWriter alternated two input buffers and
            // its results went to pooled write buffers), so the ratio measures the schedule, not cache footprint.
            byte[][] hostIn = [new byte[tileBytes], new byte[tileBytes]];
            byte[][] hostOut = [new byte[tileBytes], new byte[tileBytes]];
            HostBuffer[] stageIn = [backend.AllocateHost(tileBytes), backend.AllocateHost(tileBytes)];
            HostBuffer[] stageOut = [backend.AllocateHost(tileBytes), backend.AllocateHost(tileBytes)];
            try
            {
                void Blocking()
                {
                    for (int t = 0; t < tiles; t++)
                    {
                        int n = Bytes(t);
                        MemoryMarshal.AsBytes(source.AsSpan()).Slice(t * (int)tileBytes, n).CopyTo(hostIn[t % 2]);
                        backend.Upload(hostIn[t % 2].AsSpan(0, n), baseBuf, 0);
                        backend.LowRankProduct(terms, dOut, dIn, Tile(t));
                        backend.Download(outBuf, 0, hostOut[t % 2].AsSpan(0, n));
                        hostOut[t % 2].AsSpan(0, n).CopyTo(blockingOut.AsSpan(t * (int)tileBytes));
                    }
                }
                void Queued()
                {
                    var bytes = MemoryMarshal.AsBytes(source.AsSpan());
                    bytes.Slice(0, Bytes(0)).CopyTo(stageIn[0].Span<byte>(0, Bytes(0)));
                    for (int t = 0; t < tiles; t++)
                    {
                        backend.UploadAsync(stageIn[t % 2], 0, baseBuf, 0, Bytes(t));
                        backend.LowRankProduct(terms, dOut, dIn, Tile(t));
                        var fence = backend.DownloadAsync(outBuf, 0, stageOut[t % 2], 0, Bytes(t));
                        if (t > 0) stageOut[(t - 1) % 2].Span<byte>(0, Bytes(t - 1)).CopyTo(queuedOut.AsSpan((t - 1) * (int)tileBytes));
                        if (t + 1 < tiles) bytes.Slice((t + 1) * (int)tileBytes, Bytes(t + 1)).CopyTo(stageIn[(t + 1) % 2].Span<byte>(0, Bytes(t + 1)));
                        backend.Wait(fence);
                    }
                    stageOut[(tiles - 1) % 2].Span<byte>(0, Bytes(tiles - 1)).CopyTo(queuedOut.AsSpan((tiles - 1) * (int)tileBytes));
                }
                // Checked once: both schedules write the same bytes.
                Blocking();
                Queued();
                if (!blockingOut.AsSpan().SequenceEqual(queuedOut))
                    throw new InvalidOperationException($"tiles {dOut}×{r}×{dIn}: the queued tiles differ from the blocking ones");
                var (blocking, queued, _) = TimeAlternately(Blocking, Queued);
                double flops = 2.0 * dOut * r * dIn;
                Report(new BenchResult(backend.Name, "tiles", $"{dOut}×{r}×{dIn} bf16, {tiles} tiles", queued, flops / queued / 1e6, "GFLOP/s",
                    blocking / queued, "× blocking tiles (Upload, product, Download per tile)"), Transfer(bytesIn.Length, bytesIn.Length));
            }
            finally
            {
                foreach (var h in stageIn.Concat(stageOut)) h.Dispose();
            }
        }
    }

    private void Convert()
    {
        if (backend.Kind != BackendKind.Cpu) return;
        int n = 16 << 20;
        var f = Gaussian(n, 6);
        var u = new ushort[n];
        double toBf16 = Time(() => FloatConversion.SingleToBf16(f, u));
        double fromBf16 = Time(() => FloatConversion.Bf16ToSingle(u, f));
        Report(new BenchResult(backend.Name, "convert", "16M f32→bf16", toBf16, n * 6.0 / toBf16 / 1e6, "GB/s", null, null));
        Report(new BenchResult(backend.Name, "convert", "16M bf16→f32", fromBf16, n * 6.0 / fromBf16 / 1e6, "GB/s", null, null));
    }
}
