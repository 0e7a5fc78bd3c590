using CopaKernels.Formats;

namespace CopaKernels.Merge;

/// <summary>
/// A merge parameter that is out of range, or given to a method that does not read it. Carries the
/// parameter's name (its flag and config key, e.g. <c>density</c>, <c>weight</c>), so a caller that
/// read it from a config file can name that file and line.
/// </summary>
public sealed class ParameterException(string parameter, string reason) : CopaInputException(null, null, reason)
{
    /// <summary>The parameter's flag and config key.</summary>
    public string Parameter { get; } = parameter;
}
