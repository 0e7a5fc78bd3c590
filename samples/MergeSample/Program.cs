// CopaKernels.Merge as a library: write two small PEFT LoRA adapters, merge them with CoPA with
// MergeJob on the device "auto" picks (progress and cancellation included), print the report's summary,
// read the merged adapter back, and merge the same adapters module by module without the job. Exits 1
// if the result is not what was asked for. The README's merge snippets are excerpts of this file (a
// test checks it).
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;
using CopaKernels.Gpu;
using CopaKernels.Kernels;
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

    // The devices ILGPU found (none is needed: "auto" falls back to the SIMD CPU backend).
    foreach (IlgpuDeviceInfo d in IlgpuDevices.Report.Devices)       // what was found, and why one is unusable
        Console.WriteLine($"{d.Id}: {d.Name} {(d.Usable ? "" : d.SkipReason)}");

    // Ctrl-C cancels the merge; the output folder is then not created (it appears only when complete).
    using var cts = new CancellationTokenSource();
    Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };

    using var job = MergeJob.Plan(new MergeRequest                   // every input error is raised here, before any write
    {
        Options = new MergeOptions { Method = "copa", Density = 0.2, Lambda = 2.0 },
        Adapters = adapters,                                          // PEFT folders
        Output = output,                                              // a PEFT adapter folder (Mode = OutputMode.Model, Base = ... for a model)
    });
    using var backend = MergeDevices.Open("auto");                   // "cpu", "cuda:0", "opencl", ...
    MergeReport report = job.Run(backend, new LineProgress(), cts.Token);   // the output appears only when complete

    var sum = report.Summary;
    Console.WriteLine($"{report.Tool}: {report.Method} on {report.Device}");
    Console.WriteLine($"  modules {sum.Modules}, kept {sum.Kept} of {sum.Considered} factor entries ({100.0 * sum.Kept / sum.Considered:F1} %), zero-denominator rows {sum.ZeroDenominatorRows}");
    Console.WriteLine($"  output {report.Output.Mode}, rank {report.Output.Rank}, {report.Output.Tensors} tensors, {report.Output.DataBytes} bytes");
    Console.WriteLine($"  report: {Path.Combine(output, MergeReport.FileName)}");

    // Read the merged adapter back (CopaKernels.Formats).
    var factors = new Dictionary<string, (float[] A, float[] B)>();
    using var adapter = LoraAdapter.Open(output);                    // config and header checked
    Console.WriteLine($"r = {adapter.Config.R}, alpha = {adapter.Config.LoraAlpha}");
    foreach (LoraModule m in adapter.Modules)                        // lora_A / lora_B pairs
    {
        float[] a = adapter.Weights.ReadSingles(m.A);                // r × d_in, as F32 whatever the dtype
        float[] b = adapter.Weights.ReadSingles(m.B);                // d_out × r
        Console.WriteLine($"{m.Path}: {m.DOut}×{m.DIn}, rank {m.Rank}, scale {m.Scale}");
        factors[m.Path] = (a, b);
    }
    // CoPA returns each module exactly as a LoRA of rank Σ r_n: 4 + 4.
    bool ok = adapter.Modules.Count == 4 && adapter.Modules.All(m => m.Rank == 8) && sum.Modules == 4;

    // The same merge module by module, without files or a job: the factors the job wrote, bit for bit.
    ok &= MergeByModule(adapters, factors);
    Console.WriteLine(ok ? "MergeSample: ok" : "MergeSample: unexpected result");
    return ok ? 0 : 1;
}
finally
{
    Directory.Delete(work, recursive: true);
}

static bool MergeByModule(string[] folders, Dictionary<string, (float[] A, float[] B)> written)
{
    bool same = true;
    var adapters = folders.Select(LoraAdapter.Open).ToList();        // PEFT folders, headers checked
    using var backend = new CpuBackend();
    var options = new MergeOptions { Method = "copa" };              // docs/SEMANTICS.md §2 defaults: density 0.2, λ 2
    options.Validate(adapters.Count);                                // refuses a parameter copa does not read
    foreach (var source in AdapterModules.Plan(adapters))            // every module, with the adapters that have it
    {
        var module = AdapterModules.Load(adapters, source);          // their factors as F32
        var result = MergeMethods.Get("copa").MergeModule(backend, module, options);
        // LowRankResult (ΔW = Scale·B·A) or DenseResult (ΔW), with per-module statistics
        var lowRank = (LowRankResult)result;
        same &= written[source.Path].A.AsSpan().SequenceEqual(lowRank.A) && written[source.Path].B.AsSpan().SequenceEqual(lowRank.B);
    }
    foreach (var a in adapters) a.Dispose();
    Console.WriteLine($"  module by module: {(same ? "the same factors as the job's" : "DIFFERENT factors from the job's")}");
    return same;
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
