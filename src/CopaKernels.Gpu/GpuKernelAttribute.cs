namespace CopaKernels.Gpu;

/// <summary>How a kernel is launched, which decides how it is compiled.</summary>
internal enum KernelGrouping
{
    /// <summary>An auto-grouped kernel (first parameter an <c>Index1D</c>/<c>Index2D</c>).</summary>
    Implicit,
    /// <summary>An explicitly grouped kernel (shared memory, barriers; group size chosen at launch).</summary>
    Explicit,
}

/// <summary>
/// Marks a static method as an ILGPU kernel entry point of this library. Every marked method is
/// compiled to PTX for sm_80 and sm_90 and assembled with ptxas in CI (see KernelCatalog), so a
/// kernel that CUDA would reject fails the build even on machines without a GPU.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false, Inherited = false)]
internal sealed class GpuKernelAttribute(KernelGrouping grouping) : Attribute
{
    /// <summary>How the kernel is launched.</summary>
    public KernelGrouping Grouping { get; } = grouping;
}
