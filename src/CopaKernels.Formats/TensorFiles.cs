using CopaKernels.Formats.Safetensors;
using CopaKernels.Formats.Torch;

namespace CopaKernels.Formats;

/// <summary>Opens a file of tensors as what it is: a PyTorch checkpoint or safetensors.</summary>
public static class TensorFiles
{
    /// <summary>
    /// Opens <paramref name="path"/> as a torch.save checkpoint when its name or first bytes say it is one
    /// (<see cref="TorchCheckpoint.LooksLikeCheckpoint"/>), else as safetensors.
    /// </summary>
    public static ITensorFile Open(string path) =>
        TorchCheckpoint.LooksLikeCheckpoint(path) ? TorchCheckpoint.Open(path) : SafetensorsFile.Open(path);
}
