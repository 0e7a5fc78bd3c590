namespace CopaKernels.Kernels;

/// <summary>
/// What a backend whose buffers are host memory offers besides <see cref="IMergeBackend"/>: its kernels
/// can run on managed arrays where they lie (no upload, no download, no copy), and the caller's own array
/// passes can use the same number of threads, so <c>--threads</c> holds for them too.
/// </summary>
public interface IHostMemory
{
    /// <summary>Worker threads the backend's kernels use.</summary>
    int Threads { get; }

    /// <summary>
    /// A buffer over <paramref name="array"/> itself: kernels that write the buffer write the array. The
    /// array stays pinned until the buffer is disposed.
    /// </summary>
    KernelBuffer Wrap(float[] array);
}
