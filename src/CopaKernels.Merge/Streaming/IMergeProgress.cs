namespace CopaKernels.Merge.Streaming;

/// <summary>Receives a running merge's progress (the CLI draws bars or log lines from it). Called on the merging thread.</summary>
public interface IMergeProgress
{
    /// <summary>The job starts: <paramref name="totalBytes"/> of output in <paramref name="tensors"/> tensors.</summary>
    void Start(long totalBytes, int tensors);

    /// <summary><paramref name="bytes"/> more output bytes were written; <paramref name="tensorDone"/> names a tensor just completed.</summary>
    void Advance(long bytes, string? tensorDone);
}
