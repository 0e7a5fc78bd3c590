namespace CopaKernels.Formats.Torch;

/// <summary>
/// The one exception of the PyTorch checkpoint reader: a malformed or unsupported zip, a pickle that
/// is not a plain state dict, or a tensor it cannot honour. The message is
/// <c>file: [tensor: ]reason</c>, as every <see cref="CopaInputException"/>.
/// </summary>
public sealed class TorchCheckpointException : CopaInputException
{
    /// <summary>Creates the exception.</summary>
    public TorchCheckpointException(string path, string? tensor, string reason, Exception? inner = null)
        : base(path, tensor, reason, inner) { }
}
