using System.Globalization;

namespace CopaKernels.Formats;

/// <summary>Byte sizes as people write them: 512MiB, 2GiB, 5GB, 1.5G, 4096.</summary>
public static class MemorySize
{
    private static readonly (string Suffix, long Factor)[] Units =
    [
        ("kib", 1L << 10), ("mib", 1L << 20), ("gib", 1L << 30), ("tib", 1L << 40),
        ("kb", 1000L), ("mb", 1000_000L), ("gb", 1000_000_000L), ("tb", 1000_000_000_000L),
        // A bare K/M/G/T is binary, as in `ulimit`, `free` and PyTorch's memory strings.
        ("k", 1L << 10), ("m", 1L << 20), ("g", 1L << 30), ("t", 1L << 40),
        ("b", 1L),
    ];

    /// <summary>Parses <paramref name="text"/>; throws <see cref="CopaInputException"/> naming <paramref name="what"/>.</summary>
    public static long Parse(string text, string what)
    {
        var s = text.Trim().Replace("_", "").Replace(" ", "").ToLowerInvariant();
        long factor = 1;
        foreach (var (suffix, f) in Units)
            if (s.EndsWith(suffix, StringComparison.Ordinal))
            {
                s = s[..^suffix.Length];
                factor = f;
                break;
            }
        if (!double.TryParse(s, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var v) || !(v > 0))
            throw new CopaInputException(null, null, $"{what} '{text}' is not a size (e.g. 512MiB, 2GiB, 5GB)");
        double bytes = v * factor;
        if (bytes >= long.MaxValue / 2) throw new CopaInputException(null, null, $"{what} '{text}' is too large");
        return (long)bytes;
    }

    /// <summary>Human-readable byte count (binary units).</summary>
    public static string Format(long n)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double v = n;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? $"{n} B" : $"{v:0.##} {units[u]}";
    }
}
