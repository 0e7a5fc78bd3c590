using System.Runtime.InteropServices;
using CopaKernels.Kernels;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace CopaKernels.Gpu;

/// <summary>One device ILGPU can see, usable or not.</summary>
/// <param name="Id">How to ask for it: cuda:N, opencl:N or ilgpu-cpu.</param>
/// <param name="Kind">Backend kind it would give.</param>
/// <param name="Name">Device name as the driver reports it.</param>
/// <param name="MemoryBytes">Device memory in bytes.</param>
/// <param name="IsGpu">Whether the device is a GPU (an OpenCL CPU device such as PoCL is not).</param>
/// <param name="SkipReason">Why the device cannot run the kernels, or null when it can.</param>
public sealed record IlgpuDeviceInfo(string Id, BackendKind Kind, string Name, long MemoryBytes, bool IsGpu, string? SkipReason)
{
    /// <summary>True when the kernels can run on the device.</summary>
    public bool Usable => SkipReason == null;
}

/// <summary>What ILGPU found on this machine: the devices, and why a whole platform is missing.</summary>
/// <param name="Devices">Every CUDA and OpenCL device, in id order, usable or not.</param>
/// <param name="Notes">Platform-level findings, e.g. "OpenCL: libOpenCL.so not found".</param>
public sealed record IlgpuDeviceReport(IReadOnlyList<IlgpuDeviceInfo> Devices, IReadOnlyList<string> Notes);

/// <summary>
/// Finds ILGPU devices and opens backends on them. Order of <c>auto</c>: the first usable CUDA device, then
/// the first usable OpenCL GPU, then none (the caller falls back to the SIMD CPU backend, which beats an
/// OpenCL CPU device such as PoCL).
/// </summary>
public static class IlgpuDevices
{
    private static readonly Lazy<IlgpuDeviceReport> s_report = new(Scan);

    /// <summary>Every device found (scanned once per process) and platform-level notes.</summary>
    public static IlgpuDeviceReport Report => s_report.Value;

    /// <summary>Opens a backend on the first usable CUDA device, else the first usable OpenCL GPU; null if there is neither.</summary>
    public static IlgpuBackend? OpenAuto()
    {
        var d = Report.Devices.FirstOrDefault(x => x.Usable && x.Kind == BackendKind.Cuda)
            ?? Report.Devices.FirstOrDefault(x => x.Usable && x.Kind == BackendKind.OpenCL && x.IsGpu);
        return d == null ? null : Open(d.Id);
    }

    /// <summary>
    /// Opens a backend by id: <c>cuda</c> or <c>opencl</c> (the first usable device of the kind),
    /// <c>cuda:N</c>, <c>opencl:N</c>, or <c>ilgpu-cpu</c> (the emulator). Throws
    /// <see cref="InvalidOperationException"/> naming what was found when the device is absent or unusable.
    /// </summary>
    public static IlgpuBackend Open(string id)
    {
        var s = id.Trim().ToLowerInvariant();
        if (s == "ilgpu-cpu") return OpenCpuEmulator();
        if (s is "cuda" or "opencl")
        {
            var kind = s == "cuda" ? BackendKind.Cuda : BackendKind.OpenCL;
            var first = Report.Devices.FirstOrDefault(x => x.Usable && x.Kind == kind)
                ?? throw new InvalidOperationException($"no usable {s} device ({Describe(kind)})");
            s = first.Id;
        }
        var info = Report.Devices.FirstOrDefault(x => x.Id == s)
            ?? throw new InvalidOperationException($"no device '{id}' ({Describe(s.StartsWith("cuda", StringComparison.Ordinal) ? BackendKind.Cuda : BackendKind.OpenCL)})");
        if (!info.Usable) throw new InvalidOperationException($"device '{info.Id}' ({info.Name}) cannot run the kernels: {info.SkipReason}");
        int index = int.Parse(s.AsSpan(s.IndexOf(':') + 1), System.Globalization.CultureInfo.InvariantCulture);
        if (info.Kind == BackendKind.Cuda)
        {
            // O2 also selects ILGPU's enhanced PTX block scheduling; it is what the PTX/ptxas check compiles.
            // No ILGPU.Algorithms: the kernels use nothing from it (see PtxCompiler and KernelCatalog).
            var context = Context.Create(b => b.Cuda(_ => true).Optimize(OptimizationLevel.O2));
            return new IlgpuBackend(context, context.GetCudaDevice(index), BackendKind.Cuda, info.Id);
        }
        var clContext = Context.Create(b => b.OpenCL(_ => true).Optimize(OptimizationLevel.O1));
        return new IlgpuBackend(clContext, clContext.GetCLDevices()[index], BackendKind.OpenCL, info.Id);
    }

    /// <summary>
    /// ILGPU's CPU emulator, for tests: 2 multiprocessors of 16 threads per group. Its group threads are OS
    /// threads that meet at every barrier, so groups stay small; ILGPU's default device allows 16 as well.
    /// </summary>
    public static IlgpuBackend OpenCpuEmulator(int threadsPerGroup = 4)
    {
        var device = new CPUDevice(numThreadsPerWarp: 4, numWarpsPerMultiprocessor: Math.Max(1, threadsPerGroup / 4), numMultiprocessors: 2);
        var context = Context.Create(b => b.CPU(device).Optimize(OptimizationLevel.O1));
        return new IlgpuBackend(context, context.GetCPUDevice(0), BackendKind.IlgpuCpu, "ilgpu-cpu");
    }

    /// <summary>One line: the devices of a kind that were found (usable or not) and the platform notes.</summary>
    public static string Describe(BackendKind kind)
    {
        var found = Report.Devices.Where(d => d.Kind == kind)
            .Select(d => d.Usable ? $"{d.Id} {d.Name}" : $"{d.Id} {d.Name} (skipped: {d.SkipReason})").ToList();
        string prefix = kind == BackendKind.Cuda ? "CUDA" : "OpenCL";
        var notes = Report.Notes.Where(n => n.StartsWith(prefix, StringComparison.Ordinal)).ToList();
        if (found.Count == 0 && notes.Count == 0) return $"found no {prefix} device";
        return "found: " + string.Join("; ", found.Concat(notes));
    }

    private static IlgpuDeviceReport Scan()
    {
        var devices = new List<IlgpuDeviceInfo>();
        var notes = new List<string>();
        ScanCuda(devices, notes);
        ScanOpenCl(devices, notes);
        return new IlgpuDeviceReport(devices, notes);
    }

    private static void ScanCuda(List<IlgpuDeviceInfo> devices, List<string> notes)
    {
        if (!NativeLibrary.TryLoad(OperatingSystem.IsWindows() ? "nvcuda.dll" : "libcuda.so.1", out var lib))
        {
            notes.Add("CUDA: driver library not found (" + (OperatingSystem.IsWindows() ? "nvcuda.dll" : "libcuda.so.1") + ")");
            return;
        }
        NativeLibrary.Free(lib);
        try
        {
            // Every device, also those ILGPU would leave out, so that the skip can be explained.
            using var context = Context.Create(b => b.Cuda(_ => true));
            var list = context.GetCudaDevices();
            for (int i = 0; i < list.Count; i++)
            {
                var d = list[i];
                string? skip = d.Architecture is null || d.InstructionSet is null
                    ? $"ILGPU 1.5 has no PTX target for this GPU under driver {d.DriverVersion}"
                    : null;
                devices.Add(new IlgpuDeviceInfo($"cuda:{i}", BackendKind.Cuda, d.Name, d.MemorySize, true, skip));
            }
            if (list.Count == 0) notes.Add("CUDA: the driver reports no device");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            notes.Add($"CUDA: {e.GetType().Name}: {e.Message}");
        }
    }

    private static void ScanOpenCl(List<IlgpuDeviceInfo> devices, List<string> notes)
    {
        // ILGPU binds the unversioned name; a machine with only libOpenCL.so.1 needs the -dev package's link.
        string libName = OperatingSystem.IsWindows() ? "OpenCL.dll" : OperatingSystem.IsMacOS() ? "/System/Library/Frameworks/OpenCL.framework/OpenCL" : "libOpenCL.so";
        if (!NativeLibrary.TryLoad(libName, out var lib))
        {
            bool versioned = !OperatingSystem.IsWindows() && NativeLibrary.TryLoad("libOpenCL.so.1", out var v1) && Free(v1);
            notes.Add(versioned ? "OpenCL: libOpenCL.so.1 is present but not libOpenCL.so, which ILGPU loads (install ocl-icd-opencl-dev)"
                : $"OpenCL: {libName} not found");
            return;
        }
        NativeLibrary.Free(lib);
        try
        {
            using var context = Context.Create(b => b.OpenCL(_ => true));
            var list = context.GetCLDevices();
            for (int i = 0; i < list.Count; i++)
            {
                var d = list[i];
                bool gpu = (d.DeviceType & CLDeviceType.CL_DEVICE_TYPE_GPU) != 0;
                string? skip = null;
                if (!d.Capabilities.GenericAddressSpace)
                    skip = $"no generic address space (OpenCL {d.CLStdVersion}); ILGPU needs OpenCL 2.0 or a 3.0 device with __opencl_c_generic_address_space";
                devices.Add(new IlgpuDeviceInfo($"opencl:{i}", BackendKind.OpenCL, $"{d.Name} ({d.PlatformName})", d.MemorySize, gpu, skip));
            }
            if (list.Count == 0) notes.Add("OpenCL: no platform reports a device");
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            notes.Add($"OpenCL: {e.GetType().Name}: {e.Message}");
        }
    }

    private static bool Free(IntPtr lib)
    {
        NativeLibrary.Free(lib);
        return true;
    }
}
