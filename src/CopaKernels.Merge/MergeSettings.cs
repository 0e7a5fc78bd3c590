using System.Globalization;
using CopaKernels.Formats;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Merge.Streaming;

namespace CopaKernels.Merge;

/// <summary>
/// The merge settings as text, read one way by the command line and the config file: numbers in the
/// invariant culture ('.' for decimals, no group separators, so "1,000" and "0,5" are errors rather than
/// 1000 and 5), and the words of <c>space</c>, <c>output</c>, <c>rank</c> and <c>out-dtype</c>.
/// </summary>
public static class MergeSettings
{
    /// <summary>Parses a decimal number (sign, digits, '.', exponent); false on anything else.</summary>
    public static bool TryParseNumber(string text, out double value) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value);

    /// <summary>What a number that does not parse is told.</summary>
    public static string NotANumber(string name, string text) =>
        $"{name} '{text}' is not a number" + (text.Contains(',') ? " (use '.' for decimals and no thousands separators)" : "");

    /// <summary><c>factors</c> or <c>delta</c> (any case); null for null.</summary>
    public static MergeSpace? ParseSpace(string? s) => s?.ToLowerInvariant() switch
    {
        null => null,
        "factors" => MergeSpace.Factors,
        "delta" => MergeSpace.Delta,
        _ => throw new CopaInputException(null, null, $"space '{s}' must be factors or delta"),
    };

    /// <summary><c>adapter</c> (also for null), <c>model</c> or <c>delta</c>.</summary>
    public static OutputMode ParseMode(string? s) => s?.ToLowerInvariant() switch
    {
        null or "adapter" => OutputMode.Adapter,
        "model" => OutputMode.Model,
        "delta" => OutputMode.Delta,
        _ => throw new CopaInputException(null, null, $"output '{s}' must be adapter, model or delta"),
    };

    /// <summary><c>sum</c> (also for null: the exact merged rank) or a positive integer.</summary>
    public static int? ParseRank(string? s)
    {
        if (s == null || s.Equals("sum", StringComparison.OrdinalIgnoreCase)) return null;
        if (int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n > 0) return n;
        throw new CopaInputException(null, null, $"rank '{s}' must be 'sum' or a positive integer");
    }

    /// <summary><c>few</c> (also for null), <c>all</c> or <c>none</c> (any case): the modules whose spectra the report gives.</summary>
    public static SpectraSelection ParseSpectra(string? s) => s?.ToLowerInvariant() switch
    {
        null or "few" => SpectraSelection.Few,
        "all" => SpectraSelection.All,
        "none" => SpectraSelection.None,
        _ => throw new CopaInputException(null, null, $"report-spectra '{s}' must be few, all or none"),
    };

    /// <summary><c>bf16</c>, <c>f16</c> or <c>f32</c> (any case).</summary>
    public static DType ParseOutDType(string s) =>
        DTypes.TryParseUser(s, out var d) && d.IsMergeFloat() ? d : throw new CopaInputException(null, null, $"out-dtype '{s}' must be bf16, f16 or f32");
}
