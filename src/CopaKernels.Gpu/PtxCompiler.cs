using System.Reflection;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace CopaKernels.Gpu;

/// <summary>
/// Compiles ILGPU kernels to PTX text without a GPU, a CUDA driver or the CUDA toolkit: ILGPU's PTX
/// backend is pure managed code, so the PTX a CUDA accelerator would hand to the driver can be
/// produced anywhere and checked with ptxas. Thread-safe (compilations are serialised).
/// </summary>
/// <remarks>
/// What matches a real <c>CudaAccelerator</c>: the backend is built the same way
/// (<see cref="CudaCapabilityContext"/> of the architecture, no NVVM), and the context has optimisation
/// level O2, as the library's CUDA contexts (<see cref="IlgpuDevices.Open"/>); the two must agree, or this
/// check tests different PTX from the one that runs. This context also enables ILGPU.Algorithms, which the
/// library's contexts (CUDA, OpenCL and the CPU emulator alike) do not: the library's kernels call nothing
/// it supplies or remaps (XMath, group and warp extensions, System.Math), so their PTX does not depend on
/// it, and it lets <see cref="Compile(MethodInfo, KernelGrouping, CudaArchitecture)"/> take kernels from
/// outside the library that do use it. Like ILGPU 1.5.3 itself,
/// the PTX's <c>.target</c> is at most <c>sm_80</c> (newer GPUs JIT it), so ptxas must be told the real
/// GPU with <c>--gpu-name</c>. The PTX ISA is the one ILGPU picks for a CUDA 11.8 driver
/// (<see cref="DriverVersion"/>, ISA 7.8 for sm_80 and sm_90), the newest that Debian 12's ptxas 11.8
/// reads; a newer driver makes ILGPU write a newer <c>.version</c> with the same instructions.
/// </remarks>
internal sealed class PtxCompiler : IDisposable
{
    /// <summary>The CUDA driver version whose PTX ISA is targeted (11.8, that of the ptxas used in CI).</summary>
    public static CudaDriverVersion DriverVersion { get; } = CudaDriverVersion.FromMajorMinor(11, 8);

    private readonly Context context;
    private readonly Dictionary<CudaArchitecture, PTXBackend> backends = [];
    private readonly Lock gate = new();
    private bool disposed;

    /// <summary>Creates the ILGPU context (no accelerator is opened).</summary>
    /// <param name="optimizationLevel">ILGPU's optimisation level; O2 (which also selects the
    /// enhanced PTX block scheduling) by default, as for the library's CUDA accelerators.</param>
    public PtxCompiler(OptimizationLevel optimizationLevel = OptimizationLevel.O2)
    {
        context = Context.Create(builder => builder.Optimize(optimizationLevel).EnableAlgorithms());
    }

    /// <summary>The PTX ISA used for <paramref name="architecture"/>: what ILGPU picks for that GPU
    /// under a <see cref="DriverVersion"/> driver.</summary>
    /// <param name="architecture">The GPU architecture.</param>
    /// <exception cref="NotSupportedException">A CUDA 11.8 driver cannot target that architecture.</exception>
    public static CudaInstructionSet InstructionSetFor(CudaArchitecture architecture) =>
        CudaAccelerator.TryGetInstructionSet(architecture, DriverVersion, out _, out var isa)
            ? isa
            : throw new NotSupportedException($"ILGPU has no PTX ISA for {architecture} under a CUDA {DriverVersion.Major}.{DriverVersion.Minor} driver");

    /// <summary>Compiles a catalogued kernel to PTX for <paramref name="architecture"/>.</summary>
    /// <param name="kernel">A kernel from <see cref="KernelCatalog"/>.</param>
    /// <param name="architecture">The GPU architecture, e.g. <see cref="CudaArchitecture.SM_80"/>.</param>
    /// <returns>The PTX module text.</returns>
    public string Compile(CatalogedKernel kernel, CudaArchitecture architecture)
    {
        ArgumentNullException.ThrowIfNull(kernel);
        return Compile(kernel.Method, kernel.Grouping, architecture);
    }

    /// <summary>Compiles any kernel method (also one outside this library) to PTX.</summary>
    /// <param name="method">A static kernel method.</param>
    /// <param name="grouping">Whether it is launched implicitly (first parameter an index) or
    /// explicitly grouped; this decides the entry point's shape, as for ILGPU's kernel loaders.</param>
    /// <param name="architecture">The GPU architecture, e.g. <see cref="CudaArchitecture.SM_90"/>.</param>
    /// <returns>The PTX module text.</returns>
    public string Compile(MethodInfo method, KernelGrouping grouping, CudaArchitecture architecture)
    {
        ArgumentNullException.ThrowIfNull(method);
        var entry = grouping switch
        {
            KernelGrouping.Implicit => EntryPointDescription.FromImplicitlyGroupedKernel(method),
            KernelGrouping.Explicit => EntryPointDescription.FromExplicitlyGroupedKernel(method),
            _ => throw new ArgumentOutOfRangeException(nameof(grouping), grouping, null),
        };
        var specialization = KernelSpecialization.Empty;
        // ILGPU's IR context is shared by the backends; one compilation at a time keeps it simple.
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            var compiled = (PTXCompiledKernel)BackendFor(architecture).Compile(entry, specialization);
            return compiled.PTXAssembly;
        }
    }

    private PTXBackend BackendFor(CudaArchitecture architecture)
    {
        if (!backends.TryGetValue(architecture, out var backend))
        {
            // As CudaAccelerator does, minus NVVM (libdevice), which needs the CUDA toolkit.
            backend = new PTXBackend(context, new CudaCapabilityContext(architecture), architecture,
                InstructionSetFor(architecture), nvvmAPI: null);
            backends.Add(architecture, backend);
        }
        return backend;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        lock (gate)
        {
            if (disposed)
                return;
            disposed = true;
            foreach (var backend in backends.Values)
                backend.Dispose();
            backends.Clear();
            context.Dispose();
        }
    }
}
