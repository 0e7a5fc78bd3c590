using CopaKernels.Formats;

namespace CopaKernels.Merge;

/// <summary>
/// An input error in one module that one adapter (task) causes, raised where only the task's index is known
/// (a method, a module's plan). The planner and the runner re-raise it naming that adapter: its weights file
/// for its values, its folder otherwise.
/// </summary>
/// <param name="task">The adapter's index (0-based).</param>
/// <param name="module">The module path.</param>
/// <param name="reason">What is wrong.</param>
/// <param name="values">The adapter's stored values are at fault (NaN or Inf), not its ranks or config.</param>
public sealed class TaskInputException(int task, string module, string reason, bool values = false)
    : CopaInputException(null, module, reason)
{
    /// <summary>The adapter's index (0-based).</summary>
    public int Task { get; } = task;

    /// <summary>Whether the adapter's stored values are at fault (name its weights file rather than its folder).</summary>
    public bool Values { get; } = values;
}
