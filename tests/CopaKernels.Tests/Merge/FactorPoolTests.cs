using CopaKernels.Merge.Streaming;

namespace CopaKernels.Tests.Merge;

public class FactorPoolTests
{
    [Fact]
    public void Rent_GivesExactLengths_AndReusesWhatCameBack()
    {
        var pool = new FactorPool(capacity: 1000 * 4);
        var a = pool.Rent(300);
        var b = pool.Rent(500);
        Assert.Equal(300, a.Length);
        Assert.Equal(500, b.Length);
        pool.Return(a);
        pool.Return(b);
        Assert.Same(b, pool.Rent(500));
        Assert.Same(a, pool.Rent(300));
        Assert.NotSame(a, pool.Rent(300)); // taken already: a fresh one
    }

    [Fact]
    public void IdleArrays_StayWithinTheCapacity()
    {
        var pool = new FactorPool(capacity: 1000 * 4);
        var a = pool.Rent(600);
        var b = pool.Rent(600);
        pool.Return(a);
        pool.Return(b); // would hold 1200 floats: dropped
        Assert.Same(a, pool.Rent(600));
        Assert.NotSame(b, pool.Rent(600));
    }
}
