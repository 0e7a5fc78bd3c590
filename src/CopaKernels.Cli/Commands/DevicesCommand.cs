using System.CommandLine;
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
                $"{CpuBackend.SimdWidth}, {Environment.ProcessorCount} threads, {Terminal.Bytes(memory)} memory");
            table.Write(stdout);
            console.MarkupLine(Markup.Escape("cuda, opencl: not part of this build yet (the ILGPU backends are being built); auto uses cpu"));
            return Program.ExitOk;
        });
        return cmd;
    }
}
