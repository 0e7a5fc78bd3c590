using CopaKernels.Kernels;

namespace CopaKernels.Tests.Kernels;

public class CounterRandomTests
{
    [Fact]
    public void SameKey_SameDraws_AnyOrder()
    {
        ulong key = CounterRandom.StreamKey(42, "model.layers.0.self_attn.q_proj.lora_A", 3);
        var forward = Enumerable.Range(0, 1000).Select(i => CounterRandom.Draw(key, i)).ToArray();
        var backward = Enumerable.Range(0, 1000).Reverse().Select(i => CounterRandom.Draw(key, i)).Reverse().ToArray();
        Assert.Equal(forward, backward);
        Assert.Equal(key, CounterRandom.StreamKey(42, "model.layers.0.self_attn.q_proj.lora_A", 3));
    }

    [Fact]
    public void DifferentSeedNameOrTask_GiveDifferentStreams()
    {
        var keys = new[]
        {
            CounterRandom.StreamKey(1, "a", 0), CounterRandom.StreamKey(2, "a", 0),
            CounterRandom.StreamKey(1, "b", 0), CounterRandom.StreamKey(1, "a", 1),
        };
        Assert.Equal(keys.Length, keys.Distinct().Count());
        // Streams are not shifted copies of each other.
        var a = Enumerable.Range(0, 64).Select(i => CounterRandom.Draw(keys[0], i)).ToArray();
        var b = Enumerable.Range(0, 64).Select(i => CounterRandom.Draw(keys[3], i)).ToArray();
        Assert.True(a.Zip(b).Count(p => p.First == p.Second) < 2);
    }

    [Theory]
    [InlineData(0.1)]
    [InlineData(0.5)]
    [InlineData(0.9)]
    [InlineData(1.0)]
    public void KeepRate_MatchesDensity(double density)
    {
        ulong key = CounterRandom.StreamKey(7, "t", 0);
        uint thr = CounterRandom.KeepThreshold(density);
        const int n = 1_000_000;
        int kept = 0;
        for (int i = 0; i < n; i++) if (CounterRandom.Keep(key, i, thr)) kept++;
        double sigma = Math.Sqrt(n * density * (1 - density));
        Assert.True(Math.Abs(kept - n * density) <= 5 * sigma + 1, $"density {density}: kept {kept} of {n}");
    }

    [Fact]
    public void Draws_AreUniformAcrossBuckets()
    {
        ulong key = CounterRandom.StreamKey(9, "u", 2);
        var buckets = new int[64];
        const int n = 640_000;
        for (int i = 0; i < n; i++) buckets[CounterRandom.Draw(key, i) >> (CounterRandom.Bits - 6)]++;
        double expected = n / 64.0;
        double chi2 = buckets.Sum(c => (c - expected) * (c - expected) / expected);
        Assert.True(chi2 < 120, $"chi-square {chi2:F1} over 63 degrees of freedom");
    }
}
