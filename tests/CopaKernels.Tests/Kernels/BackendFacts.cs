using CopaKernels.Gpu;
using CopaKernels.Kernels;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace CopaKernels.Tests.Kernels;

/// <summary>
/// On a test class: its tests need a usable OpenCL device. Without one they are reported as skipped, unless
/// the environment sets REQUIRE_OPENCL=1 (CI on PoCL), where they run and fail.
/// </summary>
[AttributeUsage(AttributeTargets.Class, Inherited = true)]
public sealed class RequiresOpenClAttribute : Attribute
{
    /// <summary>Why the tests of <paramref name="testClass"/> are skipped here, or null when they run.</summary>
    public static string? SkipReason(Type? testClass)
    {
        if (testClass == null || !testClass.IsDefined(typeof(RequiresOpenClAttribute), true)) return null;
        if (Environment.GetEnvironmentVariable("REQUIRE_OPENCL") == "1") return null;
        if (IlgpuDevices.Report.Devices.Any(d => d.Usable && d.Kind == BackendKind.OpenCL)) return null;
        return $"no usable OpenCL device ({IlgpuDevices.Describe(BackendKind.OpenCL)}); set REQUIRE_OPENCL=1 to make this a failure";
    }

    internal static Type? RuntimeType(ITestMethod method) => (method.TestClass.Class as IReflectionTypeInfo)?.Type;
}

/// <summary>A <see cref="FactAttribute"/> that honours the test class's backend requirement (<see cref="RequiresOpenClAttribute"/>).</summary>
[XunitTestCaseDiscoverer("CopaKernels.Tests.Kernels.BackendFactDiscoverer", "CopaKernels.Tests")]
[AttributeUsage(AttributeTargets.Method)]
public sealed class BackendFactAttribute : FactAttribute;

/// <summary>A <see cref="TheoryAttribute"/> that honours the test class's backend requirement (<see cref="RequiresOpenClAttribute"/>).</summary>
[XunitTestCaseDiscoverer("CopaKernels.Tests.Kernels.BackendTheoryDiscoverer", "CopaKernels.Tests")]
[AttributeUsage(AttributeTargets.Method)]
public sealed class BackendTheoryAttribute : TheoryAttribute;

/// <summary>Discovers a <see cref="BackendFactAttribute"/> test: skipped when its class's backend is absent.</summary>
public sealed class BackendFactDiscoverer(IMessageSink diagnosticMessageSink) : FactDiscoverer(diagnosticMessageSink)
{
    /// <inheritdoc/>
    public override IEnumerable<IXunitTestCase> Discover(ITestFrameworkDiscoveryOptions discoveryOptions, ITestMethod testMethod, IAttributeInfo factAttribute)
    {
        var skip = RequiresOpenClAttribute.SkipReason(RequiresOpenClAttribute.RuntimeType(testMethod));
        return skip == null ? base.Discover(discoveryOptions, testMethod, factAttribute)
            : [new XunitSkippedDataRowTestCase(DiagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(), discoveryOptions.MethodDisplayOptionsOrDefault(), testMethod, skip)];
    }
}

/// <summary>Discovers a <see cref="BackendTheoryAttribute"/> test: one skipped case when its class's backend is absent.</summary>
public sealed class BackendTheoryDiscoverer(IMessageSink diagnosticMessageSink) : TheoryDiscoverer(diagnosticMessageSink)
{
    /// <inheritdoc/>
    public override IEnumerable<IXunitTestCase> Discover(ITestFrameworkDiscoveryOptions discoveryOptions, ITestMethod testMethod, IAttributeInfo theoryAttribute)
    {
        var skip = RequiresOpenClAttribute.SkipReason(RequiresOpenClAttribute.RuntimeType(testMethod));
        return skip == null ? base.Discover(discoveryOptions, testMethod, theoryAttribute)
            : [new XunitSkippedDataRowTestCase(DiagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(), discoveryOptions.MethodDisplayOptionsOrDefault(), testMethod, skip)];
    }
}
