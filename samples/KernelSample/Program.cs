// CopaKernels.Kernels on the CPU backend: magnitude selection and the low-rank product B·diag(s)·A,
// on plain arrays and spans, each checked against a plain loop. Exits 1 if a check fails.
using System.Runtime.InteropServices;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;

using var cpu = new CpuBackend(threads: 0);   // SIMD, every core
Console.WriteLine($"backend: {cpu.Name}");
var rng = new Random(7);
bool ok = true;

// 1. Magnitude selection, through the backend-neutral calls (the same code runs on a GPU backend):
//    upload a span, keep the 20 % largest |x| in place (ties kept), download the masked values.
const int n = 10_000;
float[] values = new float[n];
for (int i = 0; i < n; i++) values[i] = (float)(rng.NextDouble() * 2 - 1);
float[] masked = new float[n];
SelectionResult sel;
using (KernelBuffer x = cpu.Allocate(n * sizeof(float)))
{
    cpu.Upload(MemoryMarshal.AsBytes(values.AsSpan()), x, 0);
    sel = cpu.SelectByMagnitude(x, new TensorRange(0, n), density: 0.2);
    cpu.Download(x, 0, MemoryMarshal.AsBytes(masked.AsSpan()));
}
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

// The same selection on a span, as TensorPrimitives takes them (HostKernels: the CPU kernels without buffers).
float[] inPlace = (float[])values.Clone();
SelectionResult onSpan = HostKernels.SelectByMagnitude(inPlace, density: 0.2);
Check("span selection = backend selection", onSpan.Threshold == sel.Threshold && onSpan.Kept == sel.Kept && inPlace.AsSpan().SequenceEqual(masked));

// 2. Low-rank product W = B·diag(Factor·s)·A (dOut × r times r × dIn), written into a managed array
//    with no copy: on the CPU backend, Wrap gives a buffer over the array itself.
const int dOut = 96, dIn = 80, r = 8;
const float factor = 0.5f;
float[] b = RandomArray(dOut * r), a = RandomArray(r * dIn), s = RandomArray(r);
float[] w = new float[dOut * dIn];
using (KernelBuffer bBuf = cpu.Wrap(b), aBuf = cpu.Wrap(a), sBuf = cpu.Wrap(s), wBuf = cpu.Wrap(w))
{
    LowRankTerm term = new(bBuf, 0, aBuf, 0, r, factor, sBuf);
    cpu.LowRankProduct([term], dOut, dIn, new ProductTile(RowStart: 0, RowCount: dOut, Output: wBuf));
}

// Plain loop, in double; the backend sums in fp32 with SIMD, so compare within fp32 rounding.
double maxError = 0;
for (int i = 0; i < dOut; i++)
    for (int j = 0; j < dIn; j++)
    {
        double sum = 0;
        for (int k = 0; k < r; k++) sum += (double)b[i * r + k] * factor * s[k] * a[k * dIn + j];
        maxError = Math.Max(maxError, Math.Abs(w[i * dIn + j] - sum));
    }
Console.WriteLine($"product: {dOut}x{r} · {r}x{dIn}, W[0,0] = {w[0]:G6}, W[{dOut - 1},{dIn - 1}] = {w[^1]:G6}, max |W - loop| = {maxError:E2}");
Check("product against the loop", maxError < 1e-5);

Console.WriteLine(ok ? "KernelSample: all checks passed" : "KernelSample: a check FAILED");
return ok ? 0 : 1;

float[] RandomArray(int count)
{
    var v = new float[count];
    for (int i = 0; i < count; i++) v[i] = (float)(rng.NextDouble() - 0.5);
    return v;
}

void Check(string what, bool passed)
{
    Console.WriteLine($"  {(passed ? "ok  " : "FAIL")} {what}");
    ok &= passed;
}
