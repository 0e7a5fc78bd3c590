using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using CopaKernels.Merge;

namespace CopaKernels.Cli;

/// <summary>
/// Numbers from flags, read the one way the config file reads them (<see cref="MergeSettings.TryParseNumber"/>): the invariant culture, a '.' for
/// decimals, no group separators. System.CommandLine's own parser allows thousands separators, so
/// <c>--weight 1,000</c> became 1000 and <c>--weight 0,5</c> became 5; here a comma is an error naming
/// the flag.
/// </summary>
internal static class Numbers
{
    /// <summary>An optional number flag.</summary>
    public static Option<double?> Option(string name, string description) => new(name)
    {
        Description = description,
        CustomParser = result =>
        {
            var text = string.Join(" ", result.Tokens.Select(t => t.Value));
            if (MergeSettings.TryParseNumber(text, out var v)) return v;
            result.AddError(MergeSettings.NotANumber(name, text));
            return null;
        },
    };

    /// <summary>An optional whole-number flag (digits, with a sign where <typeparamref name="T"/> has one).</summary>
    public static Option<T?> Integer<T>(string name, string description) where T : struct, System.Numerics.IBinaryInteger<T> => new(name)
    {
        Description = description,
        CustomParser = result =>
        {
            var text = string.Join(" ", result.Tokens.Select(t => t.Value));
            if (T.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var v)) return v;
            result.AddError($"{name} '{text}' is not a whole number" + (T.IsNegative(T.Zero - T.One) ? "" : " of 0 or more"));
            return null;
        },
    };

    /// <summary>A repeatable number flag (one value per token).</summary>
    public static Option<double[]> Many(string name, string description) => new(name)
    {
        Description = description,
        AllowMultipleArgumentsPerToken = true,
        CustomParser = result =>
        {
            var values = new double[result.Tokens.Count];
            for (int i = 0; i < values.Length; i++)
            {
                var text = result.Tokens[i].Value;
                if (!MergeSettings.TryParseNumber(text, out values[i]))
                {
                    result.AddError(MergeSettings.NotANumber(name, text));
                    return [];
                }
            }
            return values;
        },
    };
}
