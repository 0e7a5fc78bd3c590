using System.Text;

namespace CopaKernels.Tests.Formats;

/// <summary>Hand-made safetensors bytes: an 8-byte length prefix, a header, then data.</summary>
internal static class StBytes
{
    /// <summary>File bytes with a header given as text (exact bytes, no padding added) and <paramref name="dataLength"/> data bytes.</summary>
    public static byte[] Make(string header, long dataLength, ulong? claimedHeaderLength = null)
        => Make(Encoding.UTF8.GetBytes(header), dataLength, claimedHeaderLength);

    public static byte[] Make(byte[] header, long dataLength, ulong? claimedHeaderLength = null)
    {
        var bytes = new byte[8 + header.Length + dataLength];
        BitConverter.TryWriteBytes(bytes, claimedHeaderLength ?? (ulong)header.Length);
        header.CopyTo(bytes, 8);
        for (long i = 0; i < dataLength; i++) bytes[8 + header.Length + i] = (byte)(i * 7 + 1);
        return bytes;
    }
}
