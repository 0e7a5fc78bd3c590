// CopaKernels.Kernels on the CPU backend: magnitude selection, row |x| sums and the low-rank product
// B·diag(s)·A, through the backend-neutral calls and on plain spans, each checked against a plain loop.
// Exits 1 if a check fails. The README's kernel snippets are excerpts of this file (a test checks it).
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

var rng = new Random(7);
bool ok = true;

// 1. Magnitude selection through the backend-neutral calls (the same code runs on a GPU backend):
//    upload, keep the 20 % largest |x| in place (ties kept), download the masked values.
const int r = 16, dIn = 640, n = r * dIn;
float[] values = RandomArray(n, scale: 2);
float[] masked = new float[n];

using var cpu = new CpuBackend(threads: 0);                      // 0 = every core
using var x = cpu.Allocate<float>(n);                            // counts and offsets in floats, as TensorRange's
cpu.Upload<float>(values, x, elementOffset: 0);
SelectionResult sel = cpu.SelectByMagnitude(x, new TensorRange(0, n), density: 0.2);
cpu.Download<float>(x, elementOffset: 0, masked);

Console.WriteLine($"backend: {cpu.Name}");
Console.WriteLine($"selection: n = {n}, k = {sel.K}, threshold = {sel.Threshold:G6}, kept = {sel.Kept}");
// Plain loop: t is the k-th smallest |x|; every |x| >= t is kept as it was, every other entry is 0.
float[] mags = values.Select(MathF.Abs).ToArray();
Array.Sort(mags);
float t = mags[sel.K - 1];
long kept = 0;
bool maskOk = true;
for (int i = 0; i < n; i++)
{
    bool keep = MathF.Abs(values[i]) >= t;
    if (keep) kept++;
    maskOk &= masked[i] == (keep ? values[i] : 0f);
}
Check("selection threshold", sel.Threshold == t);
Check("selection kept count", sel.Kept == kept);
Check("selection mask", maskOk);

// 2. The same families on spans, as TensorPrimitives takes them (HostKernels: the CPU kernels without
//    buffers, bit-identical to every backend's), on a LoRA factor of r × d_in and its BF16 copy.
float[] factor = (float[])values.Clone();                        // a LoRA factor, r × d_in
ushort[] bf16Bits = new ushort[n];
FloatConversion.SingleToBf16(values, bf16Bits);                  // as a BF16 adapter stores it
float[] sums = new float[r], maskedSums = new float[r];

SelectionResult onSpan = HostKernels.SelectByMagnitude(factor, density: 0.2);      // keep the top 20 % |x| in place
SelectionResult onBf16 = HostKernels.SelectByMagnitude(bf16Bits, DType.BF16, density: 0.2);   // the same on stored BF16, unwidened
HostKernels.RowAbsSums(factor, rows: r, cols: dIn, sums, onSpan.Threshold, maskedSums, applyMask: false);

Check("span selection = backend selection", onSpan == sel && factor.AsSpan().SequenceEqual(masked));
float[] maskedBf16 = new float[n], widened = new float[n];
FloatConversion.Bf16ToSingle(bf16Bits, maskedBf16);
FloatConversion.Bf16ToSingle(Array.ConvertAll(values, FloatConversion.SingleToBf16), widened);
Check("BF16 selection = F32 selection of the widened values",
    onBf16 == HostKernels.SelectByMagnitude(widened, density: 0.2) && maskedBf16.AsSpan().SequenceEqual(widened));
double sumError = 0;
for (int i = 0; i < r; i++)
{
    double plain = 0, above = 0;
    for (int j = 0; j < dIn; j++)
    {
        double v = Math.Abs(factor[i * dIn + j]);
        plain += v;
        if (v >= onSpan.Threshold) above += v;
    }
    sumError = Math.Max(sumError, Math.Max(Math.Abs(sums[i] - plain), Math.Abs(maskedSums[i] - above)) / Math.Max(plain, 1e-30));
}
Console.WriteLine($"row sums: {r} rows of {dIn}, sums[0] = {sums[0]:G6}, max relative error against the loop = {sumError:E2}");
Check("row sums against the loop", sumError < 1e-5);

// 3. Low-rank product W = B·diag(Factor·s)·A (dOut × r times r × dIn), written into a managed array
//    with no copy: on the CPU backend, Wrap gives a buffer over the array itself.
const int dOut = 96, rank = 8, cols = 80;
const float scale = 0.5f;
float[] b = RandomArray(dOut * rank), a = RandomArray(rank * cols), s = RandomArray(rank);
float[] w = new float[dOut * cols];
using (KernelBuffer bBuf = cpu.Wrap(b), aBuf = cpu.Wrap(a), sBuf = cpu.Wrap(s), wBuf = cpu.Wrap(w))
{
    LowRankTerm term = new(bBuf, 0, aBuf, 0, rank, scale, sBuf);
    cpu.LowRankProduct([term], dOut, cols, new ProductTile(RowStart: 0, RowCount: dOut, Output: wBuf));
}
double maxError = MaxErrorAgainstLoop(w);
Console.WriteLine($"product: {dOut}x{rank} · {rank}x{cols}, W[0,0] = {w[0]:G6}, W[{dOut - 1},{cols - 1}] = {w[^1]:G6}, max |W - loop| = {maxError:E2}");
Check("product against the loop", maxError < 1e-5);

// 4. The same product with queued transfers, as on a device: stage the factors in host memory the
//    backend allocates, queue the upload, the product and the download, wait for the download's fence.
IMergeBackend backend = cpu;                                     // any backend: on a GPU the copies overlap host work
long inBytes = (b.Length + a.Length + s.Length) * sizeof(float), outBytes = w.Length * sizeof(float);
using var device = backend.Allocate(inBytes);                    // B, A and s side by side
using var o = backend.Allocate(outBytes);
var terms = new[] { new LowRankTerm(device, 0, device, b.Length, rank, scale, device, b.Length + a.Length) };
var tile = new ProductTile(RowStart: 0, RowCount: dOut, Output: o);

using var input = backend.AllocateHost(inBytes);                 // page-locked where the device allows
using var output = backend.AllocateHost(outBytes);
float[][] data = [b, a, s];
for (int i = 0, at = 0; i < data.Length; at += data[i].Length, i++) data[i].CopyTo(input.Span<float>(at, data[i].Length));
backend.UploadAsync(input, 0, device, 0, inBytes);              // returns at once on a device
backend.LowRankProduct(terms, dOut, cols, tile);                 // sees the upload: one in-order queue
TransferFence done = backend.DownloadAsync(o, 0, output, 0, outBytes);
/* ... host work: read the next tile, write the previous one (not input, not output) ... */
backend.Wait(done);                                              // output holds the result; input may be rewritten

Check("queued product = product on arrays", output.Span<float>(0, w.Length).SequenceEqual(w));

Console.WriteLine(ok ? "KernelSample: all checks passed" : "KernelSample: a check FAILED");
return ok ? 0 : 1;

float[] RandomArray(int count, double scale = 1)
{
    var v = new float[count];
    for (int i = 0; i < count; i++) v[i] = (float)((rng.NextDouble() - 0.5) * scale);
    return v;
}

// Plain loop, in double; the backend sums in fp32 with SIMD, so compare within fp32 rounding.
double MaxErrorAgainstLoop(float[] result)
{
    double max = 0;
    for (int i = 0; i < dOut; i++)
        for (int j = 0; j < cols; j++)
        {
            double sum = 0;
            for (int k = 0; k < rank; k++) sum += (double)b[i * rank + k] * scale * s[k] * a[k * cols + j];
            max = Math.Max(max, Math.Abs(result[i * cols + j] - sum));
        }
    return max;
}

void Check(string what, bool passed)
{
    Console.WriteLine($"  {(passed ? "ok  " : "FAIL")} {what}");
    ok &= passed;
}
