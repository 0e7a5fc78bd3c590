namespace CopaKernels.Kernels;

/// <summary>
/// A point in a backend's queue of work, returned by a queued transfer (<see cref="IMergeBackend.UploadAsync"/>,
/// <see cref="IMergeBackend.DownloadAsync"/>). Once <see cref="IMergeBackend.Wait"/> returns for it, that
/// transfer and everything queued before it are complete: an upload's host bytes may be rewritten, a
/// download's host bytes may be read. The default fence (no owner) is complete from the start; it is what
/// backends without a queue (the CPU backend) return.
/// </summary>
/// <param name="Owner">The backend whose queue the fence belongs to, or null for a complete fence.</param>
/// <param name="Sequence">Position in that queue: the backend's count of queued transfers, from 1.</param>
public readonly record struct TransferFence(IMergeBackend? Owner, long Sequence)
{
    /// <summary>Waits on the owner (see <see cref="IMergeBackend.Wait"/>); returns at once for a complete fence.</summary>
    public void Wait() => Owner?.Wait(this);
}
