using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Formats;

/// <summary>Opens a file of tensors by what it holds, not by its name.</summary>
public static class TensorFiles
{
    /// <summary>
    /// Opens <paramref name="path"/> as a safetensors file, or as a PyTorch checkpoint when it starts as a
    /// zip or a pickle does (a <c>.bin</c> can be either).
    /// </summary>
    public static ITensorFile Open(string path)
    {
        Span<byte> head = stackalloc byte[4];
        int n = 0;
        try
        {
            using var f = File.OpenRead(path);
            n = f.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CopaInputException(path, null, SafetensorsFile.Describe(e), e);
        }
        // "PK\x03\x04" opens a zip (torch.save since 1.6); 0x80 a bare pickle (the legacy torch.save format).
        if (n >= 2 && ((head[0] == (byte)'P' && head[1] == (byte)'K') || head[0] == 0x80))
            throw new CopaInputException(path, null, "PyTorch checkpoints are not supported yet; save the tensors with safetensors");
        return SafetensorsFile.Open(path);
    }
}
