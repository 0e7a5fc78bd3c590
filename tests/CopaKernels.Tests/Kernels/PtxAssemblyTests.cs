using System.Reflection;
using CopaKernels.Gpu;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Xunit.Abstractions;

namespace CopaKernels.Tests.Kernels;

/// <summary>One ILGPU context for all PTX compilations of the test class (creating one costs ~0.2 s).</summary>
public sealed class PtxCompilerFixture : IDisposable
{
    /// <summary>The shared compiler.</summary>
    internal PtxCompiler Compiler { get; } = new();

    /// <inheritdoc/>
    public void Dispose() => Compiler.Dispose();
}

/// <summary>
/// Every kernel (the library's <see cref="KernelCatalog"/> and this project's <see cref="SampleKernels"/>)
/// compiled to PTX for sm_80 (A100) and sm_90 (H100) and assembled by ptxas, one test case each, so
/// PTX that the CUDA driver would reject fails CI, which has no GPU. See <see cref="Ptxas"/> for where
/// ptxas comes from and when these tests skip.
/// </summary>
public sealed class PtxAssemblyTests(PtxCompilerFixture fixture, ITestOutputHelper output) : IClassFixture<PtxCompilerFixture>
{
    private static readonly string[] GpuNames = ["sm_80", "sm_90"];

    private static IReadOnlyList<CatalogedKernel> SampleCatalogue => KernelCatalog.Scan(typeof(SampleKernels).Assembly);

    /// <summary>Kernel name × GPU, as strings so that xunit lists each pair as its own test case.</summary>
    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var kernel in KernelCatalog.All.Concat(SampleCatalogue))
            foreach (var gpu in GpuNames)
                data.Add(kernel.Name, gpu);
        return data;
    }

    [PtxasTheory]
    [MemberData(nameof(Cases))]
    public void Kernel_AssemblesWithPtxas(string kernel, string gpu)
    {
        string ptxas = Ptxas.RequirePath();
        var entry = KernelCatalog.All.Concat(SampleCatalogue).Single(k => k.Name == kernel);
        string ptx = fixture.Compiler.Compile(entry, Architecture(gpu));

        using var dir = new TempDir();
        string ptxFile = dir.File("kernel.ptx"), cubinFile = dir.File("kernel.cubin");
        File.WriteAllText(ptxFile, ptx);
        var result = Ptxas.Assemble(ptxas, ptxFile, gpu, cubinFile);

        if (result.ExitCode != 0)
            Assert.Fail($"ptxas --gpu-name {gpu} rejected the PTX of {kernel} (exit {result.ExitCode}):\n{Ptxas.Explain(result, ptx)}");
        Assert.True(result.CubinBytes > 0, $"ptxas exited 0 but wrote no cubin for {kernel} ({gpu})");
        if (result.Output.Length > 0)
            output.WriteLine(result.Output);   // warnings, kept visible in the test log
        output.WriteLine($"{kernel} {gpu}: {ptx.Length} chars of PTX, {result.CubinBytes} bytes of cubin");
    }

    /// <summary>Negative control: the check must really fail on bad PTX (a ptxas stand-in that always
    /// succeeds, or a wrapper that ignores the exit status, would make the theory above worthless).</summary>
    [PtxasFact]
    public void BrokenPtx_IsRejectedWithTheOffendingLine()
    {
        string ptxas = Ptxas.RequirePath();
        var saxpy = SampleCatalogue.Single(k => k.Method.Name == nameof(SampleKernels.Saxpy));
        string ptx = fixture.Compiler.Compile(saxpy, CudaArchitecture.SM_90);
        int ret = ptx.LastIndexOf("\tret;", StringComparison.Ordinal);
        Assert.True(ret > 0, "the SAXPY PTX has no 'ret;' to corrupt:\n" + ptx);
        string broken = ptx[..ret] + "\tnot_an_instruction.f32 %r1;\n" + ptx[ret..];

        using var dir = new TempDir();
        File.WriteAllText(dir.File("broken.ptx"), broken);
        var result = Ptxas.Assemble(ptxas, dir.File("broken.ptx"), "sm_90", dir.File("broken.cubin"));

        Assert.NotEqual(0, result.ExitCode);
        string explained = Ptxas.Explain(result, broken);
        output.WriteLine(explained);
        Assert.Contains(">> ", explained, StringComparison.Ordinal);
        Assert.Contains("not_an_instruction", explained, StringComparison.Ordinal);
    }

    [Fact]
    public void Ptx_IsProducedWithoutAGpu_ForTheIsaPtxas118Reads()
    {
        var saxpy = SampleCatalogue.Single(k => k.Method.Name == nameof(SampleKernels.Saxpy));
        foreach (var gpu in GpuNames)
        {
            string ptx = fixture.Compiler.Compile(saxpy, Architecture(gpu));
            Assert.Contains(".version 7.8", ptx, StringComparison.Ordinal);
            // ILGPU 1.5.3 writes at most sm_80 as the PTX target; newer GPUs JIT it (ptxas gets --gpu-name).
            Assert.Contains(".target sm_80", ptx, StringComparison.Ordinal);
            Assert.Contains(".entry ", ptx, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Catalogue_FindsTheAttributedKernels_WithStableUniqueNames()
    {
        var samples = SampleCatalogue;
        Assert.Equal(
            ["CopaKernels.Tests.Kernels.SampleKernels.BlockSum", "CopaKernels.Tests.Kernels.SampleKernels.Saxpy"],
            samples.Select(k => k.Name));
        Assert.Equal(KernelGrouping.Explicit, samples[0].Grouping);
        Assert.Equal(KernelGrouping.Implicit, samples[1].Grouping);

        var library = KernelCatalog.All;
        Assert.All(library, k => Assert.Same(typeof(KernelCatalog).Assembly, k.Method.Module.Assembly));
        Assert.Equal(library.Select(k => k.Name).Distinct().Count(), library.Count);
        Assert.Equal(library.Select(k => k.Name).Order(StringComparer.Ordinal), library.Select(k => k.Name));
        Assert.Same(library, KernelCatalog.All);
    }

    /// <summary>
    /// Every method that the library turns into a kernel delegate must carry [GpuKernel], so the
    /// ptxas check covers all of them; with that, the catalogue is non-empty as soon as the library
    /// loads any kernel.
    /// </summary>
    [Fact]
    public void LibraryCatalogue_CoversEveryKernelTheLibraryLoads()
    {
        var loaded = KernelReferenceScanner.KernelDelegateTargets(typeof(KernelCatalog).Assembly);
        var catalogued = KernelCatalog.All.Select(k => k.Method).ToHashSet();
        var missing = loaded.Where(m => !catalogued.Contains(m)).Select(m => $"{m.DeclaringType?.FullName}.{m.Name}").Order().ToList();
        Assert.True(missing.Count == 0, "kernels without [GpuKernel] (not checked by ptxas): " + string.Join(", ", missing));
        if (loaded.Count > 0)
            Assert.NotEmpty(KernelCatalog.All);
        output.WriteLine($"{loaded.Count} kernel(s) loaded by the library, {KernelCatalog.All.Count} catalogued");
    }

    /// <summary>The scanner itself finds kernels: this project loads both samples (test below).</summary>
    [Fact]
    public void Scanner_FindsTheKernelsThisProjectLoads()
    {
        var loaded = KernelReferenceScanner.KernelDelegateTargets(typeof(SampleKernels).Assembly);
        Assert.Contains(loaded, m => m.Name == nameof(SampleKernels.Saxpy) && m.DeclaringType == typeof(SampleKernels));
        Assert.Contains(loaded, m => m.Name == nameof(SampleKernels.BlockSum) && m.DeclaringType == typeof(SampleKernels));
    }

    /// <summary>The samples are real kernels: they compute the right thing on ILGPU's CPU accelerator.</summary>
    [Fact]
    public void SampleKernels_ComputeCorrectly_OnTheIlgpuCpuAccelerator()
    {
        // Warps of 32 like CUDA, and one group of BlockSumGroupSize threads per multiprocessor.
        var device = new CPUDevice(numThreadsPerWarp: 32, numWarpsPerMultiprocessor: SampleKernels.BlockSumGroupSize / 32, numMultiprocessors: 1);
        using var context = Context.Create(b => b.CPU(device));
        using var accelerator = context.CreateCPUAccelerator(0);

        var x = Enumerable.Range(0, 1000).Select(i => (float)i).ToArray();
        using var xs = accelerator.Allocate1D(x);
        using var ys = accelerator.Allocate1D(Enumerable.Repeat(1f, x.Length).ToArray());
        var saxpy = accelerator.LoadAutoGroupedStreamKernel<Index1D, float, ArrayView<float>, ArrayView<float>>(SampleKernels.Saxpy);
        saxpy(x.Length, 2f, xs.View, ys.View);
        Assert.Equal(x.Select(v => 2f * v + 1f), ys.GetAsArray1D());

        using var total = accelerator.Allocate1D<float>(1);
        total.MemSetToZero();
        var blockSum = accelerator.LoadStreamKernel<ArrayView<float>, ArrayView<float>>(SampleKernels.BlockSum);
        int groups = (x.Length + SampleKernels.BlockSumGroupSize - 1) / SampleKernels.BlockSumGroupSize;
        blockSum(new KernelConfig(groups, SampleKernels.BlockSumGroupSize), xs.View, total.View);
        accelerator.Synchronize();
        Assert.Equal(x.Sum(), total.GetAsArray1D()[0]);
    }

    private static CudaArchitecture Architecture(string gpu) => gpu switch
    {
        "sm_80" => CudaArchitecture.SM_80,
        "sm_90" => CudaArchitecture.SM_90,
        _ => throw new ArgumentOutOfRangeException(nameof(gpu), gpu, "not a GPU these tests target"),
    };
}
