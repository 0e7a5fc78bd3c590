using System.Diagnostics;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace CopaKernels.Tests;

/// <summary>
/// Entry point of the test assembly when it is run as a program, e.g. the self-contained build that
/// bench/gpu/pack.sh ships to a GPU machine without the .NET SDK (so no dotnet test, no vstest, and
/// no xunit console runner, which NuGet no longer serves for xunit 2). It drives xunit's own
/// framework (xunit.execution, already a dependency) in-process: discover, filter, run, report.
/// <c>dotnet test</c> does not use it (vstest loads the assembly itself), so CI is unaffected.
/// </summary>
/// <remarks>
/// Usage: <c>CopaKernels.Tests [--filter TEXT]... [--list] [--verbose]</c>. A test runs if its
/// display name (<c>Namespace.Class.Method(args)</c>) contains any of the filters (ordinal, ignoring
/// case). The last line has the format of <c>dotnet test</c>'s summary
/// (<c>Passed!  - Failed: 0, Passed: N, Skipped: N, Total: N, ...</c>) so the same scripts can sum it.
/// Exit status: 0 if all ran tests passed, 1 if any failed or none ran, 2 for bad arguments.
/// </remarks>
public static class SelfRunner
{
    /// <summary>Runs this assembly's tests; see the class remarks.</summary>
    public static int Main(string[] args)
    {
        var filters = new List<string>();
        bool list = false, verbose = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--filter" when i + 1 < args.Length: filters.Add(args[++i]); break;
                case "--list": list = true; break;
                case "--verbose": verbose = true; break;
                case "-h" or "--help":
                    Console.WriteLine("usage: CopaKernels.Tests [--filter TEXT]... [--list] [--verbose]");
                    return 0;
                default:
                    Console.Error.WriteLine($"unknown argument '{args[i]}' (try --help)");
                    return 2;
            }
        }

        var assembly = typeof(SelfRunner).Assembly;
        var clock = Stopwatch.StartNew();
        var diagnostics = new Sink(m => { if (verbose && m is IDiagnosticMessage d) Console.WriteLine("[diag] " + d.Message); });
        using var framework = new XunitTestFramework(diagnostics);

        // Discovery. Theories are pre-enumerated so each data row is a test of its own (filterable,
        // counted), as under dotnet test.
        var options = new Options();
        options.SetValue("xunit.discovery.PreEnumerateTheories", true);
        options.SetValue("xunit.discovery.IncludeSourceInformation", false);
        var cases = new List<ITestCase>();
        using (var discovered = new ManualResetEventSlim())
        using (var discoverer = framework.GetDiscoverer(Reflector.Wrap(assembly)))
        {
            discoverer.Find(includeSourceInformation: false, new Sink(m =>
            {
                if (m is ITestCaseDiscoveryMessage found) cases.Add(found.TestCase);
                else if (m is IDiscoveryCompleteMessage) discovered.Set();
            }), options);
            discovered.Wait();
        }
        var selected = cases
            .Where(c => filters.Count == 0 || filters.Any(f => c.DisplayName.Contains(f, StringComparison.OrdinalIgnoreCase)))
            .ToList();
        if (list)
        {
            foreach (var c in selected.OrderBy(c => c.DisplayName, StringComparer.Ordinal))
                Console.WriteLine(c.DisplayName);
            return 0;
        }

        int passed = 0, failed = 0, skipped = 0, errors = 0;
        var gate = new object();
        using (var finished = new ManualResetEventSlim())
        using (var executor = framework.GetExecutor(assembly.GetName()))
        {
            executor.RunTests(selected, new Sink(m =>
            {
                lock (gate)
                {
                    switch (m)
                    {
                        case ITestPassed p:
                            passed++;
                            if (verbose) Console.WriteLine($"  Passed {p.Test.DisplayName} [{p.ExecutionTime * 1000:0} ms]");
                            break;
                        case ITestFailed f:
                            failed++;
                            Console.WriteLine($"  Failed {f.Test.DisplayName} [{f.ExecutionTime * 1000:0} ms]");
                            WriteFailure(f, f.Output);
                            break;
                        case ITestSkipped s:
                            skipped++;
                            Console.WriteLine($"  Skipped {s.Test.DisplayName}: {s.Reason}");
                            break;
                        case IErrorMessage or ITestAssemblyCleanupFailure or ITestCollectionCleanupFailure
                            or ITestClassCleanupFailure or ITestCaseCleanupFailure or ITestCleanupFailure:
                            // Failures outside any test (fixtures, cleanup, catastrophic errors) count too.
                            errors++;
                            Console.WriteLine($"  Error ({m.GetType().Name})");
                            WriteFailure((IFailureInformation)m, null);
                            break;
                        case ITestAssemblyFinished:
                            finished.Set();
                            break;
                    }
                }
                return true;
            }), ExecutionOptions());
            finished.Wait();
        }

        int total = passed + failed + skipped;
        bool ok = failed == 0 && errors == 0 && passed > 0;
        Console.WriteLine();
        Console.WriteLine($"{(ok ? "Passed!" : "Failed!")}  - Failed: {failed + errors,5}, Passed: {passed,5}, Skipped: {skipped,5}, Total: {total,5}, Duration: {clock.Elapsed.TotalSeconds:0} s - {assembly.GetName().Name}.dll (self-run)");
        return ok ? 0 : 1;
    }

    private static Options ExecutionOptions()
    {
        var options = new Options();
        // The assembly's own xunit settings (parallel collections, threads = cores) apply otherwise.
        options.SetValue("xunit.execution.SynchronousMessageReporting", true);
        return options;
    }

    private static void WriteFailure(IFailureInformation failure, string? output)
    {
        for (int i = 0; i < failure.Messages.Length; i++)
        {
            string type = i < failure.ExceptionTypes.Length ? failure.ExceptionTypes[i] : "";
            Console.WriteLine((i == 0 ? "    " : "    ---- ") + type + ": " + failure.Messages[i]?.Replace("\n", "\n    "));
            if (i < failure.StackTraces.Length && !string.IsNullOrEmpty(failure.StackTraces[i]))
                Console.WriteLine("    " + failure.StackTraces[i]!.Replace("\n", "\n    "));
        }
        if (!string.IsNullOrEmpty(output))
            Console.WriteLine("    Output:\n    " + output.TrimEnd().Replace("\n", "\n    "));
    }

    /// <summary>A message sink from a delegate (the base class is what xunit wants of sinks; it only
    /// matters across .NET Framework app domains).</summary>
    private sealed class Sink(Action<IMessageSinkMessage> onMessage) : LongLivedMarshalByRefObject, IMessageSink
    {
        public Sink(Func<IMessageSinkMessage, bool> onMessage) : this(m => { onMessage(m); }) { }

        public bool OnMessage(IMessageSinkMessage message)
        {
            onMessage(message);
            return true;
        }
    }

    /// <summary>xunit's options bag (runner.utility's implementation is not available here).</summary>
    private sealed class Options : LongLivedMarshalByRefObject, ITestFrameworkDiscoveryOptions, ITestFrameworkExecutionOptions
    {
        private readonly Dictionary<string, object?> values = [];

        public TValue GetValue<TValue>(string name) =>
            values.TryGetValue(name, out var value) && value is TValue typed ? typed : default!;

        public void SetValue<TValue>(string name, TValue value) => values[name] = value;
    }
}
