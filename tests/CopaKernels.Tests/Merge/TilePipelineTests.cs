using System.Runtime.InteropServices;
using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Gpu;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels;
using CopaKernels.Merge.Streaming;
using CopaKernels.Merge;
using CopaKernels.Tests.Kernels;

namespace CopaKernels.Tests.Merge;

/// <summary>
/// <see cref="TileWriter.LowRank"/>'s pipeline (queued uploads, products and downloads through
/// <see cref="TileStaging"/>, results handed to the write queue without a host copy) against the blocking path
/// on the same backend: one Upload of the whole base, one product over every row, one Download. The written
/// bytes must be identical for every tile height (one row, odd heights with a short last tile, one tile),
/// base and output dtype, with and without a base, transposed (fan_in_fan_out) or not; every staging slot
/// must be back in the ring afterwards, also after a cancellation in the middle of a weight.
/// </summary>
public abstract class TilePipelineSuite
{
    private const int DOut = 53, DIn = 37, Rank = 6;

    protected abstract IMergeBackend Backend { get; }

    public static TheoryData<string, DType, bool, int> Cases() => new()
    {
        { "BF16", DType.BF16, false, 7 },
        { "BF16", DType.BF16, true, 3 },
        { "F32", DType.F16, true, 5 },
        { "F16", DType.BF16, false, 1 },
        { "F16", DType.F32, false, 1000 },
        { "none", DType.F32, false, 4 },
        { "none", DType.BF16, true, 1 },
    };

    [BackendTheory]
    [MemberData(nameof(Cases))]
    public void LowRank_WritesWhatOneBlockingProductWrites(string baseName, DType outType, bool transposed, int rowsPerTile)
    {
        DType? baseType = baseName == "none" ? null : Enum.Parse<DType>(baseName);
        var rng = new Random(rowsPerTile * 97 + (transposed ? 1 : 0));
        var result = new LowRankResult(Floats(rng, DOut * Rank), Floats(rng, Rank * DIn), Rank, 0.75, Rank);
        var module = new PlannedModule("m", DOut, DIn, [Rank], ResultForm.LowRank(Rank), Rank, "m.weight", transposed, 0, [0]);
        int rows = module.ProductRows, cols = module.ProductCols;
        using var dir = new TempDir();
        byte[]? baseBytes = baseType is { } bt ? Encode(Floats(rng, rows * cols), bt) : null;
        SafetensorsFile? baseFile = null;
        if (baseType is { } t)
        {
            var path = dir.File("base.safetensors");
            using (var w = new SafetensorsWriter(path, [new TensorSpec("m.weight", t, [rows, cols])]))
            {
                w.Append("m.weight", baseBytes);
                w.Commit();
            }
            baseFile = SafetensorsFile.Open(path);
        }
        using (baseFile)
        {
            var got = Pipelined(dir, module, result, outType, baseFile, rowsPerTile, CancellationToken.None, null);
            var want = Blocking(result, transposed, rows, cols, outType, baseType, baseBytes);
            int same = want.AsSpan().CommonPrefixLength(got);
            Assert.True(same == want.Length && got.Length == want.Length,
                $"pipelined tiles of {rowsPerTile} rows differ from one blocking product at byte {same} of {want.Length} (row {same / (cols * (outType.Bits() / 8))})");
        }
    }

    [BackendFact]
    public void Cancelled_MidWeight_GivesEverySlotBack()
    {
        var rng = new Random(3);
        var result = new LowRankResult(Floats(rng, DOut * Rank), Floats(rng, Rank * DIn), Rank, 1.0, Rank);
        var module = new PlannedModule("m", DOut, DIn, [Rank], ResultForm.LowRank(Rank), Rank, "m.weight", false, 0, [0]);
        using var dir = new TempDir();
        using var cts = new CancellationTokenSource();
        var progress = new CancelOnFirstAdvance(cts);
        Assert.ThrowsAny<OperationCanceledException>(() => Pipelined(dir, module, result, DType.F32, null, 2, cts.Token, progress));
        Assert.True(progress.Advanced >= 1);
    }

    /// <summary>Runs TileWriter.LowRank into a file and returns the tensor's bytes (empty when it threw after the ring check).</summary>
    private byte[] Pipelined(TempDir dir, PlannedModule module, LowRankResult result, DType outType, SafetensorsFile? baseFile,
        int rowsPerTile, CancellationToken ct, IMergeProgress? progress)
    {
        var path = dir.File($"out-{Guid.NewGuid():N}.safetensors");
        var spec = new TensorSpec(module.TensorName, outType, [module.ProductRows, module.ProductCols]);
        using var writer = new SafetensorsWriter(path, [spec]);
        using var staging = new TileStaging(Backend);
        try
        {
            using var queue = new WriteQueue(_ => writer);
            new TileWriter(Backend, queue, staging, progress, ct)
                .LowRank(writer.Layout[0], module, result, baseFile, baseFile?.Tensors[0], rowsPerTile);
            queue.Complete();
        }
        finally
        {
            // Whatever happened, the queue has drained: every result buffer is back.
            Assert.Equal(TileStaging.OutputSlots, staging.FreeOutputs);
        }
        writer.Commit();
        using var file = SafetensorsFile.Open(path);
        var bytes = new byte[file.Tensors[0].ByteLength];
        file.ReadBytes(file.Tensors[0], 0, bytes);
        return bytes;
    }

    /// <summary>The same weight with the blocking calls: whole factors and base uploaded, every row in one product, one download.</summary>
    private byte[] Blocking(LowRankResult r, bool transposed, int rows, int cols, DType outType, DType? baseType, byte[]? baseBytes)
    {
        var b = Backend;
        var left = transposed ? Transpose(r.A, Rank, DIn) : r.B;
        var right = transposed ? Transpose(r.B, DOut, Rank) : r.A;
        var st = outType;
        var bst = baseType is { } t ? t : DType.F32;
        using var lb = b.Allocate(left.Length * 4L);
        using var rb = b.Allocate(right.Length * 4L);
        b.Upload(MemoryMarshal.AsBytes(left.AsSpan()), lb, 0);
        b.Upload(MemoryMarshal.AsBytes(right.AsSpan()), rb, 0);
        using var output = b.Allocate((long)rows * cols * st.Size());
        using var baseBuf = baseBytes is null ? null : b.Allocate(baseBytes.Length);
        if (baseBytes != null) b.Upload(baseBytes, baseBuf!, 0);
        b.LowRankProduct([new LowRankTerm(lb, 0, rb, 0, Rank, (float)r.Scale)], rows, cols,
            new ProductTile(0, rows, output, 0, st, baseBuf, 0, bst));
        var bytes = new byte[output.ByteLength];
        b.Download(output, 0, bytes);
        return bytes;
    }

    private static float[] Transpose(float[] x, int rows, int cols)
    {
        var t = new float[x.Length];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                t[j * rows + i] = x[i * cols + j];
        return t;
    }

    private static float[] Floats(Random rng, int n)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(TestData.Gaussian(rng) * 0.1);
        return x;
    }

    private static byte[] Encode(float[] x, DType type)
    {
        if (type == DType.F32) return MemoryMarshal.AsBytes(x.AsSpan()).ToArray();
        var u = new ushort[x.Length];
        if (type == DType.BF16) FloatConversion.SingleToBf16(x, u);
        else FloatConversion.SingleToHalf(x, u);
        return MemoryMarshal.AsBytes(u.AsSpan()).ToArray();
    }

    private sealed class CancelOnFirstAdvance(CancellationTokenSource cts) : IMergeProgress
    {
        public int Advanced { get; private set; }

        public void Start(long totalBytes, int tensors) { }

        public void Advance(long bytes, string? tensorDone)
        {
            Advanced++;
            cts.Cancel();
        }
    }
}

/// <summary>The tile pipeline on the SIMD CPU backend (every transfer completes at once).</summary>
public sealed class CpuTilePipelineTests : TilePipelineSuite
{
    private static readonly CpuBackend s_backend = new(2);

    protected override IMergeBackend Backend => s_backend;
}

/// <summary>The tile pipeline on ILGPU's CPU emulator.</summary>
public sealed class IlgpuCpuTilePipelineTests : TilePipelineSuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.OpenCpuEmulator());

    protected override IMergeBackend Backend => s_backend.Value;
}

/// <summary>The tile pipeline on the first usable OpenCL device, where the transfers really queue.</summary>
[RequiresOpenCl]
public sealed class OpenClTilePipelineTests : TilePipelineSuite
{
    private static readonly SharedBackend s_backend = new(() => IlgpuDevices.Open("opencl"));

    protected override IMergeBackend Backend => s_backend.Value;
}
