using CopaKernels.Formats;

namespace CopaKernels.Merge;

/// <summary>
/// The errors a merge raises for NaN or Inf: the input's fault when the factors themselves hold one,
/// else an overflow of the scaling, named as such so the user lowers the right number.
/// </summary>
internal static class MergeErrors
{
    /// <summary>The one message for a non-finite input value (adapter is the merge's 0-based index).</summary>
    public static TaskInputException NonFinite(string path, int adapter) =>
        new(adapter, path, $"adapter {adapter + 1} holds NaN or Inf in this module", values: true);

    /// <summary>The one message for a non-finite value in task <paramref name="task"/>'s factors of <paramref name="m"/>.</summary>
    public static TaskInputException NonFinite(ModuleInput m, int task) => NonFinite(m.Path, m.AdapterOf(task));

    /// <summary>
    /// A NaN or Inf in a value made from task <paramref name="task"/>'s factors (<paramref name="what"/>: its
    /// dense ΔW, its weighted factors): the input's fault when the factors themselves hold one, else an
    /// overflow of the scaling, which the message names (<paramref name="scaling"/>) instead of blaming the input.
    /// </summary>
    public static TaskInputException NonFiniteDerived(ModuleInput m, int task, string what, string scaling)
    {
        var t = m.Tasks[task];
        if (Formats.Numerics.NonFinite.Any(t.A) || Formats.Numerics.NonFinite.Any(t.B)) return NonFinite(m, task);
        return new TaskInputException(m.AdapterOf(task), m.Path,
            $"{what} of adapter {m.AdapterOf(task) + 1} overflows F32 ({scaling}); its values are finite: lower the scaling");
    }

    /// <summary>What a NaN or Inf in task n's weighted factor (factor space: √|w_n·s_n| times it) means.</summary>
    public static Func<int, TaskInputException> WeightedOverflow(ModuleInput m, MergeOptions o, string factor) =>
        task => NonFiniteDerived(m, task, $"{factor} weighted by √|w·s|",
            $"weight {G(o.WeightOf(m, task))} × LoRA scale {G(m.Tasks[task].Scale)}");

    /// <summary>What a NaN or Inf in task n's dense ΔW_n = s_n·B_n·A_n (times w_n where <paramref name="o"/> is given) means.</summary>
    public static Func<int, TaskInputException> DeltaOverflow(ModuleInput m, MergeOptions? o = null) =>
        task => NonFiniteDerived(m, task, o is null ? "ΔW = s·B·A" : "w·ΔW = w·s·B·A",
            (o is null ? "" : $"weight {G(o.WeightOf(m, task))}, ") + $"LoRA scale {G(m.Tasks[task].Scale)}");

    /// <summary>A number for messages: four significant digits, invariant, "1.25e+39".</summary>
    internal static string G(double x) => x.ToString("G4", System.Globalization.CultureInfo.InvariantCulture).Replace("E", "e");
}
