namespace CopaKernels.Merge;

/// <summary>The shape of a merged module, known before merging.</summary>
/// <param name="Rank">Inner dimension of the low-rank result, or 0 for a dense ΔW.</param>
/// <param name="DenseArrays">
/// For a dense result: how many d_out × d_in F32 arrays the method holds at once besides the N task
/// deltas (its result included), for the memory plan.
/// </param>
public readonly record struct ResultForm(int Rank, int DenseArrays = 0)
{
    /// <summary>A dense d_out × d_in ΔW made with the task deltas and one more array (the result).</summary>
    public static ResultForm Dense => new(0, 1);

    /// <summary>A dense ΔW whose method holds <paramref name="arrays"/> d_out × d_in arrays besides the task deltas.</summary>
    public static ResultForm DenseHolding(int arrays) => new(0, arrays);

    /// <summary>A low-rank pair of inner dimension <paramref name="rank"/>.</summary>
    public static ResultForm LowRank(int rank) => new(rank);

    /// <summary>Whether the result is dense.</summary>
    public bool IsDense => Rank == 0;

    /// <summary>The common rank; throws naming the module when the adapters' ranks differ.</summary>
    internal static int EqualRanks(string path, IReadOnlyList<(int Rank, double Alpha)> tasks, string why)
    {
        var ranks = tasks.Select(t => t.Rank).ToList();
        if (FirstDiffering(ranks) is var other and > 0)
            throw new TaskInputException(other, path, $"ranks differ between adapters ({string.Join(", ", ranks)}); {why}");
        return ranks[0];
    }

    /// <summary>The index of the first rank that differs from the first one (the task to name), or −1 when all agree.</summary>
    internal static int FirstDiffering(IReadOnlyList<int> ranks)
    {
        for (int i = 1; i < ranks.Count; i++)
            if (ranks[i] != ranks[0]) return i;
        return -1;
    }
}
