using CopaKernels.Formats.Numerics;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Kernels;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// The queued transfers (<see cref="IMergeBackend.UploadAsync"/>, <see cref="IMergeBackend.DownloadAsync"/>,
/// host buffers and fences) against the blocking ones, bit for bit, and their fence contract: a staging buffer
/// rewritten right after its fence never changes what was uploaded, a download read right after its fence holds
/// the kernels' results, and disposing a host buffer waits for the copy still queued on it. Abstract: every
/// backend runs it. On a backend whose transfers really queue (OpenCL), a broken fence shows up as stale or
/// sentinel bytes; on the others the same assertions hold trivially.
/// </summary>
public abstract class HostTransferSuite
{
    protected abstract IMergeBackend Backend { get; }

    /// <summary>Product tile shape for the pipelined loop (an emulator gets a small one).</summary>
    protected virtual (int DOut, int DIn, int Rank, int TileRows) TileShape => (517, 1031, 16, 64);

    /// <summary>Elements of the long product queued ahead of a download (keeps a queued download pending for a while).</summary>
    protected virtual (int DOut, int DIn, int Rank) SlowProduct => (1024, 2048, 64);

    [BackendTheory]
    [InlineData(1, 0, 0)]
    [InlineData(3, 5, 1)]
    [InlineData(4099, 4, 7)]
    [InlineData((1 << 20) + 13, 12, 3)]
    public void QueuedTransfers_MatchTheBlockingOnes_BitForBit(int n, int hostOffset, int bufferOffset)
    {
        var b = Backend;
        var data = Bytes(n, n);
        using var host = b.AllocateHost(hostOffset + n);
        data.CopyTo(host.Span<byte>(hostOffset, n));
        using var queued = b.Allocate(bufferOffset + n + 5);
        using var blocking = b.Allocate(bufferOffset + n + 5);
        var up = b.UploadAsync(host, hostOffset, queued, bufferOffset, n);
        b.Upload(data, blocking, bufferOffset);
        b.Wait(up);
        var want = new byte[bufferOffset + n + 5];
        var got = new byte[bufferOffset + n + 5];
        b.Download(blocking, 0, want);
        b.Download(queued, 0, got);
        Assert.Equal(want, got);

        using var back = b.AllocateHost(n + 9);
        back.Span<byte>(0, n + 9).Fill(0xA5);
        b.Wait(b.DownloadAsync(queued, bufferOffset, back, 9, n));
        Assert.True(back.Span<byte>(9, n).SequenceEqual(data), "queued download differs from what was uploaded");
        Assert.True(back.Span<byte>(0, 9).IndexOfAnyExcept((byte)0xA5) < 0, "queued download wrote before its offset");
    }

    /// <summary>
    /// A product tile loop written both ways: blocking Upload/Download per tile, and queued, with two input and
    /// two output staging buffers, each reused right after the fence that frees it and read right after the
    /// fence that fills it (TileWriter's schedule). The bytes must be identical.
    /// </summary>
    [BackendTheory]
    [InlineData(DType.BF16, DType.BF16)]
    [InlineData(DType.F32, DType.F16)]
    public void QueuedTileLoop_MatchesTheBlockingLoop_BitForBit(DType baseType, DType outType)
    {
        var b = Backend;
        var (dOut, dIn, rank, tileRows) = TileShape;
        var rng = new Random(dOut * 31 + rank);
        var bf = Floats(rng, dOut * rank);
        var af = Floats(rng, rank * dIn);
        var baseBytes = Encode(Floats(rng, dOut * dIn), baseType);
        int inRow = dIn * baseType.Size(), outRow = dIn * outType.Size();
        using var bBuf = Upload(b, bf);
        using var aBuf = Upload(b, af);
        using var baseBuf = b.Allocate((long)tileRows * inRow);
        using var outBuf = b.Allocate((long)tileRows * outRow);
        LowRankTerm[] terms = [new LowRankTerm(bBuf, 0, aBuf, 0, rank, 0.75f)];
        ProductTile Tile(int r0, int n) => new(r0, n, outBuf, 0, outType, baseBuf, 0, baseType);

        var want = new byte[dOut * outRow];
        for (int r0 = 0; r0 < dOut; r0 += tileRows)
        {
            int n = Math.Min(tileRows, dOut - r0);
            b.Upload(baseBytes.AsSpan(r0 * inRow, n * inRow), baseBuf, 0);
            b.LowRankProduct(terms, dOut, dIn, Tile(r0, n));
            b.Download(outBuf, 0, want.AsSpan(r0 * outRow, n * outRow));
        }

        var got = new byte[dOut * outRow];
        HostBuffer[] input = [b.AllocateHost(tileRows * inRow), b.AllocateHost(tileRows * inRow)];
        HostBuffer[] output = [b.AllocateHost(tileRows * outRow), b.AllocateHost(tileRows * outRow)];
        try
        {
            baseBytes.AsSpan(0, Math.Min(tileRows, dOut) * inRow).CopyTo(input[0].Span<byte>(0, Math.Min(tileRows, dOut) * inRow));
            int previous = -1;
            for (int r0 = 0, t = 0; r0 < dOut; r0 += tileRows, t++)
            {
                int n = Math.Min(tileRows, dOut - r0);
                // Sentinel: a download read before it landed would show it.
                output[t % 2].Span<byte>(0, n * outRow).Fill(0xCD);
                b.UploadAsync(input[t % 2], 0, baseBuf, 0, n * inRow);
                b.LowRankProduct(terms, dOut, dIn, Tile(r0, n));
                var fence = b.DownloadAsync(outBuf, 0, output[t % 2], 0, n * outRow);
                if (previous >= 0) Collect(previous, t - 1);
                int next = r0 + tileRows;
                if (next < dOut)
                {
                    // input[(t+1) % 2] last fed tile t−1, whose download fence was waited for: it may be rewritten.
                    int m = Math.Min(tileRows, dOut - next);
                    baseBytes.AsSpan(next * inRow, m * inRow).CopyTo(input[(t + 1) % 2].Span<byte>(0, m * inRow));
                }
                b.Wait(fence);
                previous = r0;
            }
            Collect(previous, (dOut + tileRows - 1) / tileRows - 1);

            void Collect(int r0, int t)
            {
                int n = Math.Min(tileRows, dOut - r0);
                output[t % 2].Span<byte>(0, n * outRow).CopyTo(got.AsSpan(r0 * outRow));
            }
        }
        finally
        {
            foreach (var h in input.Concat(output)) h.Dispose();
        }
        int diff = want.AsSpan().CommonPrefixLength(got);
        Assert.True(diff == want.Length, $"queued loop differs from the blocking loop at byte {diff} (row {diff / Math.Max(1, outRow)})");
    }

    /// <summary>A staging buffer rewritten as soon as each fence returns: every upload keeps the bytes it was queued with.</summary>
    [BackendFact]
    public void StagingReusedAfterEachFence_KeepsEveryUploadIntact()
    {
        var b = Backend;
        const int n = (1 << 18) + 3, copies = 6;
        using var host = b.AllocateHost(n);
        var targets = Enumerable.Range(0, copies).Select(_ => b.Allocate(n)).ToList();
        try
        {
            for (int i = 0; i < copies; i++)
            {
                host.Span<byte>(0, n).Fill((byte)(17 * i + 1));
                b.Wait(b.UploadAsync(host, 0, targets[i], 0, n));
            }
            host.Span<byte>(0, n).Fill(0);
            var back = new byte[n];
            for (int i = 0; i < copies; i++)
            {
                b.Download(targets[i], 0, back);
                Assert.True(back.AsSpan().IndexOfAnyExcept((byte)(17 * i + 1)) < 0, $"upload {i} changed after its staging was reused");
            }
        }
        finally
        {
            foreach (var t in targets) t.Dispose();
        }
    }

    /// <summary>
    /// Disposing a host buffer with a download still queued on it waits for that download: the next buffer of
    /// the same size (the pool hands the same block back) is never written by it.
    /// </summary>
    [BackendFact]
    public void DisposingAHostBuffer_WaitsForItsQueuedDownload()
    {
        var b = Backend;
        var (dOut, dIn, rank) = SlowProduct;
        var rng = new Random(5);
        using var bBuf = Upload(b, Floats(rng, dOut * rank));
        using var aBuf = Upload(b, Floats(rng, rank * dIn));
        using var outBuf = b.Allocate((long)dOut * dIn * 4);
        int bytes = Math.Min(1 << 16, dOut * dIn * 4);
        var first = b.AllocateHost(bytes, pageLocked: false);
        b.LowRankProduct([new LowRankTerm(bBuf, 0, aBuf, 0, rank)], dOut, dIn, new ProductTile(0, dOut, outBuf));
        var pending = b.DownloadAsync(outBuf, 0, first, 0, bytes);
        first.Dispose();
        pending.Wait();
        using var second = b.AllocateHost(bytes, pageLocked: false);
        second.Span<byte>(0, bytes).Fill(0x5A);
        b.Synchronize();
        Assert.True(second.Span<byte>(0, bytes).IndexOfAnyExcept((byte)0x5A) < 0, "a download queued on a disposed host buffer landed in later memory");
        Assert.Throws<ObjectDisposedException>(() => first.Span<byte>(0, 1));
        first.Dispose();
    }

    [BackendFact]
    public void FencesAndArguments_AreChecked()
    {
        var b = Backend;
        using var other = new CpuBackend(1);
        using var host = b.AllocateHost(16);
        using var buf = b.Allocate(16);
        using var otherHost = other.AllocateHost(16);
        using var otherBuf = other.Allocate(16);
        Assert.Throws<ArgumentException>(() => b.UploadAsync(otherHost, 0, buf, 0, 4));
        Assert.Throws<ArgumentException>(() => b.UploadAsync(host, 0, otherBuf, 0, 4));
        Assert.Throws<ArgumentException>(() => b.DownloadAsync(buf, 0, otherHost, 0, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.UploadAsync(host, 13, buf, 0, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.UploadAsync(host, 0, buf, 13, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.DownloadAsync(buf, 0, host, -1, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.DownloadAsync(buf, 0, host, 0, 17));
        Assert.Throws<ArgumentException>(() => b.Wait(new TransferFence(other, 1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => host.Span<float>(3, 2));

        // Complete fences: the default one, a zero-length transfer's, any after Synchronize.
        b.Wait(default);
        default(TransferFence).Wait();
        Assert.Equal(default, b.UploadAsync(host, 16, buf, 16, 0));
        var fence = b.UploadAsync(host, 0, buf, 0, 16);
        Assert.True(fence.Owner is null || ReferenceEquals(fence.Owner, b));
        b.Synchronize();
        fence.Wait();

        var gone = b.AllocateHost(8);
        gone.Dispose();
        Assert.Throws<ObjectDisposedException>(() => b.UploadAsync(gone, 0, buf, 0, 8));
        Assert.Throws<ObjectDisposedException>(() => b.DownloadAsync(buf, 0, gone, 0, 8));
    }

    /// <summary>
    /// What can be page-locked: on the backends tested here nothing (the CPU backend has no device; ILGPU 1.5.3
    /// page-locks only on CUDA, and returns a no-op lock on OpenCL and its CPU emulator). Unlocked memory when
    /// asked for, everywhere.
    /// </summary>
    [BackendFact]
    public void PageLocking_IsReportedAsTheDeviceAllows()
    {
        using var asked = Backend.AllocateHost(1 << 12);
        using var plain = Backend.AllocateHost(1 << 12, pageLocked: false);
        Assert.Equal(Backend.Kind == BackendKind.Cuda, asked.PageLocked);
        Assert.False(plain.PageLocked);
        Assert.Same(Backend, asked.Owner);
        Assert.Equal(1 << 12, asked.ByteLength);
    }

    private static byte[] Bytes(int n, int seed)
    {
        var x = new byte[n];
        new Random(seed).NextBytes(x);
        return x;
    }

    private static float[] Floats(Random rng, int n)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(TestData.Gaussian(rng) * 0.05);
        return x;
    }

    private static KernelBuffer Upload(IMergeBackend b, float[] x)
    {
        var buf = b.Allocate(Math.Max(1, x.LongLength) * 4);
        b.Upload(System.Runtime.InteropServices.MemoryMarshal.AsBytes(x.AsSpan()), buf, 0);
        return buf;
    }

    private static byte[] Encode(float[] x, DType type)
    {
        if (type == DType.F32) return System.Runtime.InteropServices.MemoryMarshal.AsBytes(x.AsSpan()).ToArray();
        var u = new ushort[x.Length];
        if (type == DType.BF16) FloatConversion.SingleToBf16(x, u);
        else FloatConversion.SingleToHalf(x, u);
        return System.Runtime.InteropServices.MemoryMarshal.AsBytes(u.AsSpan()).ToArray();
    }
}
