using CopaKernels.Kernels;
using ILGPU;
using ILGPU.Runtime;

namespace CopaKernels.Gpu;

/// <summary>
/// Family 1 on ILGPU: the exact k-th smallest |x| and the keep-mask |x| ≥ t (SEMANTICS §1), by radix select.
/// </summary>
/// <remarks>
/// <para>Keys are the float bits with the sign cleared (<see cref="MagnitudeKey"/>, as on the CPU): for
/// non-negative IEEE floats the unsigned order of the bits is the numeric order, +0 and −0 are one key,
/// and a key ≥ 0x7F800000 is Inf or NaN. The digits are those of the CPU backend: bits 30..20, 19..9 and
/// 8..0 (2048, 2048 and 512 buckets). After the three passes the prefix is the whole key t, and the keys
/// counted below the chosen bucket of every pass are exactly the keys &lt; t, so the kept count is
/// n − less without a counting pass.</para>
/// <para>Small tensors (LoRA factors): one group per tensor does the three histograms in shared memory,
/// picks each digit itself and masks its tensor: one launch for a whole batch. Large tensors: every pass is
/// a multi-group histogram (shared-memory bins merged into global ones with one atomic per non-empty bin)
/// followed by a one-group kernel that picks the digit and updates a device-side state; the host only
/// reads that state back at the end. Non-finite input is caught from the first histogram (buckets ≥ 0x7F8),
/// and a tensor with a non-finite entry is never masked.</para>
/// <para>PoCL: no warp intrinsics, no Half, every barrier in uniform control flow (fixed pass count, loop
/// trip counts equal across the group).</para>
/// </remarks>
internal sealed class MagnitudeSelection : IDisposable
{
    private const int Bins = 2048;

    /// <summary>Largest group the shared scratch arrays are sized for.</summary>
    internal const int MaxGroupSize = 256;

    /// <summary>A lone tensor up to this many elements is selected by one group; a longer one by the whole device.</summary>
    internal const long SmallLimit = 1 << 15;

    /// <summary>
    /// In a batch of several tensors, the one-group form takes tensors up to this length: the groups of the
    /// other tensors keep the device busy, and one launch beats seven per tensor.
    /// </summary>
    internal const long BatchSmallLimit = 1 << 18;

    // State of a multi-group select, as longs: remaining rank, keys below the prefix, prefix bits, status.
    private const int StateRank = 0, StateLess = 1, StatePrefix = 2, StateStatus = 3;
    private const long StatusActive = 0, StatusDone = 1, StatusNonFinite = 2;

    private readonly IlgpuBackend _backend;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<long>, ArrayView<long>, int> _small;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, long, ArrayView<uint>, ArrayView<long>, int> _histogram;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<uint>, ArrayView<long>, int> _pick;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, long, ArrayView<long>> _mask;
    private readonly MemoryBuffer1D<uint, Stride1D.Dense> _globalHistogram;
    private MemoryBuffer1D<long, Stride1D.Dense>? _state;
    private MemoryBuffer1D<long, Stride1D.Dense>? _batch;

    public MagnitudeSelection(IlgpuBackend backend)
    {
        _backend = backend;
        var acc = backend.Accelerator;
        _small = acc.LoadKernel<ArrayView<float>, ArrayView<long>, ArrayView<long>, int>(SelectSmallKernel);
        _histogram = acc.LoadKernel<ArrayView<float>, long, ArrayView<uint>, ArrayView<long>, int>(HistogramKernel);
        _pick = acc.LoadKernel<ArrayView<uint>, ArrayView<long>, int>(PickKernel);
        _mask = acc.LoadKernel<ArrayView<float>, long, ArrayView<long>>(MaskKernel);
        _globalHistogram = acc.Allocate1D<uint>(Bins);
        _globalHistogram.View.MemSetToZero(backend.Stream);
    }

    public SelectionResult Select(IlgpuBuffer x, TensorRange range, double density, bool applyMask)
    {
        Span<SelectionResult> one = stackalloc SelectionResult[1];
        SelectBatched(x, [range], density, one, applyMask);
        return one[0];
    }

    public void SelectBatched(IlgpuBuffer x, ReadOnlySpan<TensorRange> ranges, double density, Span<SelectionResult> results, bool applyMask)
    {
        int count = ranges.Length;
        long limit = count == 1 ? SmallLimit : BatchSmallLimit;
        var bits = new long[count];
        var less = new long[count];
        var status = new long[count];
        var small = new List<int>();
        var large = new List<int>();
        for (int i = 0; i < count; i++)
        {
            if (ranges[i].Length > uint.MaxValue)
                throw new ArgumentOutOfRangeException(nameof(ranges), $"tensor {i} has {ranges[i].Length} elements; the ILGPU selection counts in 32 bits");
            if (ranges[i].Length > limit) large.Add(i);
            else if (ranges[i].Length > 0) small.Add(i);
        }
        if (small.Count > 0) RunSmall(x, ranges, density, small, bits, less, status, applyMask);
        if (large.Count > 0) RunLarge(x, ranges, density, large, bits, less, status, applyMask);
        for (int i = 0; i < count; i++)
            if (status[i] == StatusNonFinite) throw new NonFiniteInputException(i);
        for (int i = 0; i < count; i++)
        {
            long n = ranges[i].Length, k = SelectionResult.KFor(n, density);
            results[i] = k == 0 ? new SelectionResult(0, 0f, n)
                : new SelectionResult(k, BitConverter.UInt32BitsToSingle((uint)bits[i]), n - less[i]);
        }
    }

    private void RunSmall(IlgpuBuffer x, ReadOnlySpan<TensorRange> ranges, double density, List<int> small,
        long[] bits, long[] less, long[] status, bool applyMask)
    {
        int m = small.Count;
        var desc = new long[3 * m];
        for (int j = 0; j < m; j++)
        {
            var r = ranges[small[j]];
            (desc[3 * j], desc[3 * j + 1], desc[3 * j + 2]) = (r.Offset, r.Length, SelectionResult.KFor(r.Length, density));
        }
        if (_batch == null || _batch.Length < 6L * m)
        {
            _batch?.Dispose();
            _batch = _backend.Accelerator.Allocate1D<long>(Math.Max(6L * m, 96));
        }
        var stream = _backend.Stream;
        var descView = _batch.View.SubView(0, 3L * m);
        var outView = _batch.View.SubView(3L * m, 3L * m);
        descView.CopyFromCPU(stream, desc);
        _small(stream, new KernelConfig(m, _backend.SelectionGroupSize), x.Floats, descView, outView, applyMask ? 1 : 0);
        var o = new long[3 * m];
        outView.CopyToCPU(stream, o);
        _backend.Synchronize();
        for (int j = 0; j < m; j++)
            (bits[small[j]], less[small[j]], status[small[j]]) = (o[3 * j], o[3 * j + 1], o[3 * j + 2]);
    }

    /// <summary>
    /// The whole-device form, tensor after tensor on the one stream, each with its own state slot (the
    /// global bins are cleared by every pick, so they are reused); all states come back in one copy.
    /// </summary>
    private void RunLarge(IlgpuBuffer x, ReadOnlySpan<TensorRange> ranges, double density, List<int> large,
        long[] bits, long[] less, long[] status, bool applyMask)
    {
        var stream = _backend.Stream;
        int m = large.Count;
        var states = new long[4 * m];
        for (int j = 0; j < m; j++)
        {
            states[4 * j + StateRank] = SelectionResult.KFor(ranges[large[j]].Length, density);
            states[4 * j + StateStatus] = StatusActive;
        }
        if (_state == null || _state.Length < 4L * m)
        {
            _state?.Dispose();
            _state = _backend.Accelerator.Allocate1D<long>(Math.Max(4L * m, 64));
        }
        var all = _state.View.SubView(0, 4L * m);
        all.CopyFromCPU(stream, states);
        int g = _backend.SelectionGroupSize;
        for (int j = 0; j < m; j++)
        {
            var range = ranges[large[j]];
            var view = x.Floats.SubView(range.Offset, range.Length);
            var state = all.SubView(4L * j, 4);
            int groups = (int)Math.Clamp((range.Length + 8L * g - 1) / (8L * g), 1, _backend.MaxResidentGroups);
            var config = new KernelConfig(groups, g);
            for (int pass = 0; pass < 3; pass++)
            {
                _histogram(stream, config, view, range.Length, _globalHistogram.View, state, pass);
                _pick(stream, new KernelConfig(1, g), _globalHistogram.View, state, pass);
            }
            if (applyMask) _mask(stream, config, view, range.Length, state);
        }
        all.CopyToCPU(stream, states);
        _backend.Synchronize();
        for (int j = 0; j < m; j++)
            (bits[large[j]], less[large[j]], status[large[j]]) = (states[4 * j + StatePrefix], states[4 * j + StateLess], states[4 * j + StateStatus]);
    }

    // ---------------------------------------------------------------- kernels and their device helpers

    private static int Shift(int pass) => pass == 0 ? 20 : pass == 1 ? 9 : 0;

    private static int BucketCount(int pass) => pass == 2 ? 512 : Bins;

    // Bits above the current digit, which must equal the prefix chosen so far (none in pass 0).
    private static int HighShift(int pass) => pass == 0 ? 31 : pass == 1 ? 20 : 9;

    /// <summary>
    /// Whole group: finds the bucket holding the rank-th key (1-based) of a histogram. Each thread sums a
    /// contiguous run of buckets, then one thread walks the run totals and the buckets of the one run that
    /// holds the rank: about group size + buckets / group size steps, not 2048. Leaves the bucket in
    /// pick[0] and the count below it in pick[1], visible to every thread on return.
    /// </summary>
    private static void PickBucket(ArrayView<uint> histogram, int buckets, long rank, ArrayView<long> partial, ArrayView<long> pick)
    {
        int tid = Group.IdxX, g = Group.DimX;
        int chunk = (buckets + g - 1) / g;
        int b0 = tid * chunk, b1 = XMin(buckets, b0 + chunk);
        long s = 0;
        for (int b = b0; b < b1; b++) s += histogram[b];
        partial[tid] = s;
        Group.Barrier();
        if (tid == 0)
        {
            long cum = 0;
            int t = 0;
            while (t < g - 1 && cum + partial[t] < rank)
            {
                cum += partial[t];
                t++;
            }
            int b = t * chunk, end = XMin(buckets, b + chunk);
            while (b < end - 1 && cum + histogram[b] < rank)
            {
                cum += histogram[b];
                b++;
            }
            pick[0] = b;
            pick[1] = cum;
        }
        Group.Barrier();
    }

    private static int XMin(int a, int b) => a < b ? a : b;

    private static bool AnyNonFinite(ArrayView<uint> histogram)
    {
        uint bad = 0;
        for (int b = (int)(MagnitudeKey.F32Infinity >> 20); b < Bins; b++) bad |= histogram[b];
        return bad != 0;
    }

    /// <summary>One group per tensor: ranges holds (offset, length, k) triples, results gets (t bits, keys below t, status).</summary>
    [GpuKernel(KernelGrouping.Explicit)]
    internal static void SelectSmallKernel(ArrayView<float> x, ArrayView<long> ranges, ArrayView<long> results, int applyMask)
    {
        var histogram = SharedMemory.Allocate<uint>(Bins);
        var partial = SharedMemory.Allocate<long>(MaxGroupSize);
        var pick = SharedMemory.Allocate<long>(2);
        var flag = SharedMemory.Allocate<int>(1);
        int r = Grid.IdxX, tid = Group.IdxX, g = Group.DimX;
        long offset = ranges[3 * r], n = ranges[3 * r + 1], k = ranges[3 * r + 2];
        uint prefix = 0;
        long rank = k, less = 0;
        bool done = false, bad = false;
        for (int pass = 0; pass < 3; pass++)
        {
            int shift = Shift(pass), high = HighShift(pass);
            uint digitMask = (uint)BucketCount(pass) - 1;
            for (int b = tid; b < Bins; b += g) histogram[b] = 0;
            Group.Barrier();
            if (!done)
            {
                for (long i = tid; i < n; i += g)
                {
                    uint key = Interop.FloatAsInt(x[offset + i]) & MagnitudeKey.F32Mask;
                    if ((key >> high) == (prefix >> high)) Atomic.Add(ref histogram[(int)((key >> shift) & digitMask)], 1u);
                }
            }
            Group.Barrier();
            if (tid == 0) flag[0] = pass == 0 && AnyNonFinite(histogram) ? 1 : 0;
            PickBucket(histogram, BucketCount(pass), rank, partial, pick);
            if (!done)
            {
                if (flag[0] != 0) bad = true;
                if (bad || k == 0) done = true;
                else
                {
                    prefix |= (uint)pick[0] << shift;
                    rank -= pick[1];
                    less += pick[1];
                }
            }
            Group.Barrier();
        }
        if (applyMask != 0 && !bad && k > 0)
        {
            for (long i = tid; i < n; i += g)
            {
                uint key = Interop.FloatAsInt(x[offset + i]) & MagnitudeKey.F32Mask;
                if (key < prefix) x[offset + i] = 0f;
            }
        }
        if (tid == 0)
        {
            results[3 * r] = prefix;
            results[3 * r + 1] = less;
            results[3 * r + 2] = bad ? StatusNonFinite : StatusActive;
        }
    }

    /// <summary>Every group: the histogram of one digit over the keys that match the prefix in the state, added into the global bins.</summary>
    [GpuKernel(KernelGrouping.Explicit)]
    internal static void HistogramKernel(ArrayView<float> x, long n, ArrayView<uint> histogram, ArrayView<long> state, int pass)
    {
        var local = SharedMemory.Allocate<uint>(Bins);
        int tid = Group.IdxX, g = Group.DimX;
        for (int b = tid; b < Bins; b += g) local[b] = 0;
        Group.Barrier();
        if (state[StateStatus] == StatusActive)
        {
            uint prefix = (uint)state[StatePrefix];
            int shift = Shift(pass), high = HighShift(pass);
            uint digitMask = (uint)BucketCount(pass) - 1;
            long stride = (long)Grid.DimX * g;
            for (long i = (long)Grid.IdxX * g + tid; i < n; i += stride)
            {
                uint key = Interop.FloatAsInt(x[i]) & MagnitudeKey.F32Mask;
                if ((key >> high) == (prefix >> high)) Atomic.Add(ref local[(int)((key >> shift) & digitMask)], 1u);
            }
        }
        Group.Barrier();
        for (int b = tid; b < Bins; b += g)
        {
            uint c = local[b];
            if (c != 0) Atomic.Add(ref histogram[b], c);
        }
    }

    /// <summary>One group: picks the digit of this pass from the global bins, updates the state, clears the bins.</summary>
    [GpuKernel(KernelGrouping.Explicit)]
    internal static void PickKernel(ArrayView<uint> histogram, ArrayView<long> state, int pass)
    {
        var partial = SharedMemory.Allocate<long>(MaxGroupSize);
        var pick = SharedMemory.Allocate<long>(2);
        int tid = Group.IdxX, g = Group.DimX;
        long status = state[StateStatus], rank = state[StateRank];
        PickBucket(histogram, BucketCount(pass), rank, partial, pick);
        if (tid == 0 && status == StatusActive)
        {
            if (pass == 0 && AnyNonFinite(histogram)) state[StateStatus] = StatusNonFinite;
            else if (rank == 0) state[StateStatus] = StatusDone;
            else
            {
                state[StatePrefix] = state[StatePrefix] | (pick[0] << Shift(pass));
                state[StateRank] = rank - pick[1];
                state[StateLess] = state[StateLess] + pick[1];
            }
        }
        Group.Barrier();
        for (int b = tid; b < Bins; b += g) histogram[b] = 0;
    }

    /// <summary>Every group: zeroes (+0) the entries whose key is below the selected threshold.</summary>
    [GpuKernel(KernelGrouping.Explicit)]
    internal static void MaskKernel(ArrayView<float> x, long n, ArrayView<long> state)
    {
        if (state[StateStatus] != StatusActive) return;
        uint t = (uint)state[StatePrefix];
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = (long)Grid.IdxX * Group.DimX + Group.IdxX; i < n; i += stride)
        {
            uint key = Interop.FloatAsInt(x[i]) & MagnitudeKey.F32Mask;
            if (key < t) x[i] = 0f;
        }
    }

    public void Dispose()
    {
        _globalHistogram.Dispose();
        _state?.Dispose();
        _batch?.Dispose();
    }
}
