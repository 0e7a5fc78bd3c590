using System.Runtime.InteropServices;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Reference;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// Families 1 and 2 against their scalar references. Abstract: every backend runs the same suite
/// (the CPU SIMD backend now; the ILGPU backends with smaller sizes where they emulate).
/// </summary>
public abstract class SelectionSuite : IDisposable
{
    protected abstract IMergeBackend Backend { get; }

    /// <summary>Largest tensor this backend's tests use.</summary>
    protected virtual int MaxSize => 1 << 21;

    /// <summary>Whether <see cref="EverySize0To256_EveryKind_MatchesReference"/> checks length n (an emulator checks a subset).</summary>
    protected virtual bool CheckEverySize(int n) => true;

    /// <summary>How many small tensors <see cref="Batched_ThousandsOfSmallTensors_MatchPerTensorReference"/> selects in one call.</summary>
    protected virtual int ManyTensors => 3000;

    public static readonly double[] Densities = [1.0, 0.9, 0.5, 0.2, 0.01, 1e-6, 1e-17];

    public virtual void Dispose() => Backend.Dispose();

    protected KernelBuffer Upload(float[] data, long padBefore = 0, long padAfter = 0)
    {
        var buf = Backend.Allocate((padBefore + data.Length + padAfter) * 4);
        Backend.Upload(MemoryMarshal.AsBytes(data.AsSpan()), buf, padBefore * 4);
        return buf;
    }

    protected float[] Download(KernelBuffer buf, long offset, int n)
    {
        var r = new float[n];
        Backend.Download(buf, offset * 4, MemoryMarshal.AsBytes(r.AsSpan()));
        return r;
    }

    private void CheckOne(float[] data, double density, string label)
    {
        var expected = (float[])data.Clone();
        var want = ReferenceMagnitudeSelection.Select(expected, density);
        using var buf = Upload(data, 3, 5);
        var got = Backend.SelectByMagnitude(buf, new TensorRange(3, data.Length), density);
        Assert.True(want.K == got.K, $"{label}: k expected {want.K}, got {got.K}");
        Assert.True(BitConverter.SingleToUInt32Bits(want.Threshold) == BitConverter.SingleToUInt32Bits(got.Threshold),
            $"{label}: threshold expected {TestData.Bits(want.Threshold)}, got {TestData.Bits(got.Threshold)}");
        Assert.True(want.Kept == got.Kept, $"{label}: kept expected {want.Kept}, got {got.Kept}");
        var after = Download(buf, 0, data.Length + 8);
        for (int i = 0; i < data.Length; i++)
            if (BitConverter.SingleToUInt32Bits(expected[i]) != BitConverter.SingleToUInt32Bits(after[i + 3]))
                Assert.Fail($"{label}: mask differs at {i}: input {TestData.Bits(data[i])}, expected {TestData.Bits(expected[i])}, got {TestData.Bits(after[i + 3])}");
        Assert.All(after.Take(3).Concat(after.Skip(3 + data.Length)), v => Assert.Equal(0f, v));

        // Threshold only: same t and kept count, tensor untouched.
        using var buf2 = Upload(data);
        var only = Backend.SelectByMagnitude(buf2, new TensorRange(0, data.Length), density, applyMask: false);
        Assert.Equal(got, only);
        Assert.Equal(data.Select(BitConverter.SingleToUInt32Bits), Download(buf2, 0, data.Length).Select(BitConverter.SingleToUInt32Bits));
    }

    [BackendFact]
    public void EverySize0To256_EveryKind_MatchesReference()
    {
        for (int n = 0; n <= 256; n++)
        {
            if (!CheckEverySize(n)) continue;
            foreach (var kind in TestData.Kinds)
                foreach (var d in new[] { 0.2, 0.5, 1e-17 })
                    CheckOne(TestData.Make(kind, n, 1), d, $"n={n} kind={kind} density={d}");
        }
    }

    [BackendTheory]
    [InlineData(1)]
    [InlineData(31)]
    [InlineData(33)]
    [InlineData(127)]
    [InlineData(1027)]
    [InlineData(6 * 512 + 7)]
    [InlineData(16 * 4096)]
    [InlineData(4096 * 16 + 5)]
    public void OddSizes_EveryKind_EveryDensity(int n)
    {
        foreach (var kind in TestData.Kinds)
            foreach (var d in Densities)
                CheckOne(TestData.Make(kind, n, 2), d, $"n={n} kind={kind} density={d}");
    }

    [BackendTheory]
    [InlineData(300_001)]
    [InlineData((1 << 20) + 3)]
    public void LargeTensors_MatchReference(int n)
    {
        if (n > MaxSize) return;
        foreach (var kind in new[] { "gaussian", "ties", "lora-b", "wide", "equal" })
            foreach (var d in new[] { 0.2, 0.5, 1e-6 })
                CheckOne(TestData.Make(kind, n, 3), d, $"n={n} kind={kind} density={d}");
    }

    [BackendTheory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(float.NegativeInfinity)]
    public void NonFinite_IsAnError_AtAnyDensity(float bad)
    {
        foreach (int n in new[] { 1, 100, 300_001 })
        {
            if (n > MaxSize) continue;
            foreach (var d in new[] { 1.0, 0.2 })
            {
                var data = TestData.Make("gaussian", n, 4);
                data[n / 2] = bad;
                using var buf = Upload(data);
                Assert.Throws<NonFiniteInputException>(() => Backend.SelectByMagnitude(buf, new TensorRange(0, n), d));
            }
        }
    }

    [BackendFact]
    public void Batched_LoraFactorSet_MatchesPerTensorReference()
    {
        // A's of 16×256, B's of 256×16 and 448×16 with gaps between them, every kind.
        var sizes = new List<int>();
        for (int i = 0; i < 30; i++) sizes.Add(i % 3 == 0 ? 16 * 256 : i % 3 == 1 ? 256 * 16 : 448 * 16);
        sizes.AddRange([0, 1, 7, 1027]);
        var tensors = sizes.Select((n, i) => TestData.Make(TestData.Kinds[i % TestData.Kinds.Length], n, i)).ToList();
        long total = sizes.Sum(n => (long)n + 3);
        var all = new float[total];
        var ranges = new TensorRange[sizes.Count];
        long off = 0;
        for (int i = 0; i < sizes.Count; i++)
        {
            tensors[i].CopyTo(all, off);
            ranges[i] = new TensorRange(off, sizes[i]);
            off += sizes[i] + 3;
        }
        foreach (var d in new[] { 0.2, 0.9 })
        {
            using var buf = Upload(all);
            var results = new SelectionResult[sizes.Count];
            Backend.SelectByMagnitudeBatched(buf, ranges, d, results);
            var after = Download(buf, 0, (int)total);
            for (int i = 0; i < sizes.Count; i++)
            {
                var expected = (float[])tensors[i].Clone();
                var want = ReferenceMagnitudeSelection.Select(expected, d);
                Assert.True(want == results[i], $"tensor {i} (n={sizes[i]}, density {d}): expected {want}, got {results[i]}");
                var got = after.AsSpan((int)ranges[i].Offset, sizes[i]).ToArray();
                Assert.Equal(expected.Select(BitConverter.SingleToUInt32Bits), got.Select(BitConverter.SingleToUInt32Bits));
                for (int g = 0; g < 3; g++) Assert.Equal(0f, after[ranges[i].Offset + sizes[i] + g]);
            }
        }
    }

    [BackendFact]
    public void Batched_ThousandsOfSmallTensors_MatchPerTensorReference()
    {
        // Every LoRA factor of a model in one call: thousands of small tensors of every kind and length, plus
        // long ones (the whole-device path of a GPU backend where the size allows), back to back with no gaps.
        var rng = new Random(11);
        var sizes = Enumerable.Range(0, ManyTensors).Select(_ => rng.Next(0, 200)).Append(40_003).Append(Math.Min(MaxSize, 300_001)).ToArray();
        var tensors = sizes.Select((n, i) => TestData.Make(TestData.Kinds[i % TestData.Kinds.Length], n, i)).ToArray();
        var all = tensors.SelectMany(t => t).ToArray();
        var ranges = new TensorRange[sizes.Length];
        for (int i = 0, off = 0; i < sizes.Length; off += sizes[i], i++) ranges[i] = new TensorRange(off, sizes[i]);
        using var buf = Upload(all);
        var results = new SelectionResult[sizes.Length];
        Backend.SelectByMagnitudeBatched(buf, ranges, 0.3, results);
        var after = Download(buf, 0, all.Length);
        for (int i = 0; i < sizes.Length; i++)
        {
            var expected = (float[])tensors[i].Clone();
            var want = ReferenceMagnitudeSelection.Select(expected, 0.3);
            Assert.True(want == results[i], $"tensor {i} (n={sizes[i]}): expected {want}, got {results[i]}");
            var got = after.AsSpan((int)ranges[i].Offset, sizes[i]).ToArray();
            Assert.True(expected.Select(BitConverter.SingleToUInt32Bits).SequenceEqual(got.Select(BitConverter.SingleToUInt32Bits)),
                $"tensor {i} (n={sizes[i]}): mask differs");
        }
    }

    [BackendFact]
    public void Batched_NonFinite_NamesTheFirstBadTensor()
    {
        var data = TestData.Make("gaussian", 4 * 1000, 5);
        data[2 * 1000 + 17] = float.NaN;
        data[3 * 1000 + 1] = float.PositiveInfinity;
        using var buf = Upload(data);
        var ranges = Enumerable.Range(0, 4).Select(i => new TensorRange(i * 1000, 1000)).ToArray();
        var e = Assert.Throws<NonFiniteInputException>(() => Backend.SelectByMagnitudeBatched(buf, ranges, 0.2, new SelectionResult[4]));
        Assert.Equal(2, e.RangeIndex);
    }

    [BackendTheory]
    [InlineData(16, 4096)]
    [InlineData(16, 1027)]
    [InlineData(7, 33)]
    [InlineData(1, 1)]
    [InlineData(3, 0)]
    [InlineData(64, 4099)]
    public void RowAbsSums_PlainAndMasked_MatchReference(int rows, int cols)
    {
        foreach (var kind in new[] { "gaussian", "ties", "lora-b", "signed-zeros" })
        {
            var data = TestData.Make(kind, rows * cols, 6);
            var sel = (float[])data.Clone();
            float t = ReferenceMagnitudeSelection.Select(sel, 0.2).Threshold;
            var (wantSums, wantMasked) = ReferenceRowAbsSums.Compute(data, rows, cols, t);
            using var x = Upload(data);
            using var sums = Backend.Allocate(rows * 4 + 4);
            using var masked = Backend.Allocate(rows * 4 + 4);
            Backend.RowAbsSums(new MatrixView(x, 0, rows, cols), new BufferView(sums, 1));
            var plain = Download(sums, 1, rows);
            Backend.RowAbsSums(new MatrixView(x, 0, rows, cols), new BufferView(sums, 1), new RowThreshold(t, new BufferView(masked, 0), ZeroBelow: true));
            var fusedSums = Download(sums, 1, rows);
            var fusedMasked = Download(masked, 0, rows);
            for (int i = 0; i < rows; i++)
            {
                Near(wantSums[i], plain[i], cols, $"{kind} {rows}×{cols} row {i} plain");
                Near(wantSums[i], fusedSums[i], cols, $"{kind} {rows}×{cols} row {i} fused");
                Near(wantMasked[i], fusedMasked[i], cols, $"{kind} {rows}×{cols} row {i} masked");
            }
            // applyMask zeroed exactly what the selection would.
            var after = Download(x, 0, rows * cols);
            Assert.Equal(sel.Select(BitConverter.SingleToUInt32Bits), after.Select(BitConverter.SingleToUInt32Bits));
        }
    }

    [BackendFact]
    public void RowAbsSums_ZeroBelowWithoutMaskedSums_ZeroesAndWritesThePlainSums()
    {
        const int rows = 5, cols = 37;
        var data = TestData.Make("gaussian", rows * cols, 11);
        var sel = (float[])data.Clone();
        float t = ReferenceMagnitudeSelection.Select(sel, 0.3).Threshold;
        var (wantSums, _) = ReferenceRowAbsSums.Compute(data, rows, cols, t);
        using var x = Upload(data, padBefore: 2);
        using var sums = Backend.Allocate<float>(rows);
        Backend.RowAbsSums(new MatrixView(x, 2, rows, cols), new BufferView(sums, 0), new RowThreshold(t, ZeroBelow: true));
        var got = new float[rows];
        Backend.Download<float>(sums, 0, got);
        for (int i = 0; i < rows; i++) Near(wantSums[i], got[i], cols, $"row {i}");
        Assert.Equal(sel.Select(BitConverter.SingleToUInt32Bits), Download(x, 2, rows * cols).Select(BitConverter.SingleToUInt32Bits));
    }

    [BackendFact]
    public void ElementTypedTransfers_CountElementsOfTheSpansType()
    {
        var data = TestData.Make("gaussian", 10, 12);
        using var buf = Backend.Allocate<float>(13);
        Assert.Equal(52, buf.ByteLength);
        Backend.Upload<float>(data, buf, elementOffset: 3);
        Assert.Equal(data, Download(buf, 3, 10));                        // the byte-level download at 3·4 bytes
        var halves = new ushort[4];
        Backend.Download<ushort>(buf, elementOffset: 6, halves);           // ushort elements: bytes 12..19, floats 3 and 4
        Assert.Equal(BitConverter.SingleToUInt32Bits(data[0]) & 0xFFFF, halves[0]);
        Assert.Equal(BitConverter.SingleToUInt32Bits(data[1]) >> 16, halves[3]);
        Assert.Throws<ArgumentOutOfRangeException>(() => Backend.Upload<float>(data, buf, elementOffset: 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => Backend.Upload<float>(data, buf, elementOffset: -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => Backend.Allocate<double>(long.MaxValue / 4));
        Assert.Throws<ArgumentNullException>(() => Backend.RowAbsSums(new MatrixView(null!, 0, 1, 1), new BufferView(buf, 0)));
    }

    private static void Near(float want, float got, int terms, string label)
    {
        // fp32 accumulation of non-negative terms: relative error at most ~ terms·ε, typically far less.
        double tol = Math.Abs(want) * Math.Min(1e-3, 4e-7 * Math.Max(8, Math.Sqrt(terms) * 4)) + 1e-38;
        Assert.True(Math.Abs(want - got) <= tol, $"{label}: expected {want:G9}, got {got:G9} (tolerance {tol:G3})");
    }
}
