// CopaKernels.Merge as a library: write two small PEFT LoRA adapters, merge them with CoPA on the CPU
// backend with MergeJob (progress and cancellation included), print the report's
// summary and read the merged adapter back. Exits 1 if the result is not what was asked for.
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Kernels.Cpu;
using CopaKernels.Merge;
using CopaKernels.Merge.Streaming;

string work = Path.Combine(Path.GetTempPath(), $"copa-merge-sample-{Environment.ProcessId}");
Directory.CreateDirectory(work);
try
{
    // Two adapters of rank 4 on the attention projections of a 2-layer, 64-wide model.
    string[] adapters = [WriteAdapter(Path.Combine(work, "task-a"), seed: 1), WriteAdapter(Path.Combine(work, "task-b"), seed: 2)];
    string output = Path.Combine(work, "merged");

    // Ctrl-C cancels the merge; the output folder is then not created (it appears only when complete).
    using var cts = new CancellationTokenSource();
    Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };

    var request = new MergeRequest
    {
        Options = new MergeOptions { Method = "copa", Density = 0.2, Lambda = 2.0 },
        Adapters = adapters,
        Output = output,      // a PEFT adapter folder (OutputMode.Adapter, the default)
    };
    using var job = MergeJob.Plan(request);               // opens and checks every input, before any write
    using var backend = new CpuBackend();
    MergeReport report = job.Run(backend, new LineProgress(), cts.Token);

    var sum = report.Summary;
    Console.WriteLine($"{report.Tool}: {report.Method} on {report.Device}");
    Console.WriteLine($"  modules {sum.Modules}, kept {sum.Kept} of {sum.Considered} factor entries ({100.0 * sum.Kept / sum.Considered:F1} %), zero-denominator rows {sum.ZeroDenominatorRows}");
    Console.WriteLine($"  output {report.Output.Mode}, rank {report.Output.Rank}, {report.Output.Tensors} tensors, {report.Output.DataBytes} bytes");
    Console.WriteLine($"  report: {Path.Combine(output, MergeReport.FileName)}");

    using var merged = LoraAdapter.Open(output);
    Console.WriteLine($"  read back: {merged.Modules.Count} modules, r = {merged.Config.R}");
    // CoPA returns each module exactly as a LoRA of rank Σ r_n: 4 + 4.
    bool ok = merged.Modules.Count == 4 && merged.Modules.All(m => m.Rank == 8) && sum.Modules == 4;
    Console.WriteLine(ok ? "MergeSample: ok" : "MergeSample: unexpected result");
    return ok ? 0 : 1;
}
finally
{
    Directory.Delete(work, recursive: true);
}

// A PEFT adapter folder (adapter_config.json + adapter_model.safetensors) with random factors.
static string WriteAdapter(string folder, int seed)
{
    Directory.CreateDirectory(folder);
    const int width = 64, rank = 4;
    var modules = new List<AdapterModuleSpec>();
    for (int layer = 0; layer < 2; layer++)
        foreach (var proj in new[] { "q_proj", "v_proj" })
            modules.Add(new AdapterModuleSpec($"model.layers.{layer}.self_attn.{proj}", DOut: width, DIn: width, Rank: rank));
    var config = AdapterWriter.MakeConfig(r: rank, loraAlpha: 8, targetModules: ["q_proj", "v_proj"], baseModel: "sample/base");
    using var writer = new AdapterWriter(folder, config, modules, DType.F32);
    var rng = new Random(seed);
    foreach (var tensor in writer.Weights.Layout)   // factors in the file's layout order
    {
        var values = new float[tensor.ElementCount];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(rng.NextDouble() - 0.5) * 0.1f;
        writer.Weights.AppendSingles(tensor.Name, values);
    }
    writer.Commit();
    return folder;
}

// Progress: one line when the merge starts and one per finished tensor.
sealed class LineProgress : IMergeProgress
{
    private long _done, _total;

    public void Start(long totalBytes, int tensors)
    {
        _total = totalBytes;
        Console.WriteLine($"merging: {tensors} tensors, {totalBytes} bytes");
    }

    public void Advance(long bytes, string? tensorDone)
    {
        _done += bytes;
        if (tensorDone != null) Console.WriteLine($"  {100.0 * _done / Math.Max(1, _total),5:F1} %  {tensorDone}");
    }
}
