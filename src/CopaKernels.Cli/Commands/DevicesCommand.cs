using System.CommandLine;
using CopaKernels.Gpu;
using CopaKernels.Kernels;
using CopaKernels.Kernels.Cpu;
using Spectre.Console;

namespace CopaKernels.Cli.Commands;

/// <summary><c>copa devices</c>: every backend found, with what it offers, and why any was skipped.</summary>
internal static class DevicesCommand
{
    public static Command Create(TextWriter stdout)
    {
        var cmd = new Command("devices", "List the compute devices copa can use (cpu with its SIMD width; cuda and opencl devices)");
        cmd.SetAction(_ =>
        {
            var console = Terminal.For(stdout);
            var table = new TextTable(("device", false), ("kind", false), ("name", false), ("details", false));
            var memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
            table.Add("cpu", "SIMD CPU", System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString(),
                $"{CpuBackend.MachineSimdWidth}, {Environment.ProcessorCount} threads, {Terminal.Bytes(memory)} memory");
            var report = IlgpuDevices.Report;
            foreach (var d in report.Devices)
            {
                string kind = d.Kind == BackendKind.Cuda ? "CUDA" : d.IsGpu ? "OpenCL GPU" : "OpenCL CPU";
                string details = $"{CopaKernels.Formats.MemorySize.Format(d.MemoryBytes)} memory" + (d.Usable ? "" : $"; skipped: {d.SkipReason}");
                table.Add(d.Id, kind, d.Name, details);
            }
            table.Write(stdout);
            foreach (var note in report.Notes) console.MarkupLine(Markup.Escape(note));
            var auto = report.Devices.FirstOrDefault(x => x.Usable && x.Kind == BackendKind.Cuda)
                ?? report.Devices.FirstOrDefault(x => x.Usable && x.Kind == BackendKind.OpenCL && x.IsGpu);
            console.MarkupLine(Markup.Escape($"auto uses {auto?.Id ?? "cpu"}"));
            return Program.ExitOk;
        });
        return cmd;
    }
}
