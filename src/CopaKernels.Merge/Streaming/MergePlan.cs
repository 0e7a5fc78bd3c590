using CopaKernels.Formats;
using CopaKernels.Formats.Peft;
using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge.Streaming;

/// <summary>One module of a planned merge: what is read, what comes out, and where it goes.</summary>
/// <param name="Path">Module path (e.g. <c>model.layers.3.self_attn.q_proj</c>).</param>
/// <param name="DOut">d_out.</param>
/// <param name="DIn">d_in.</param>
/// <param name="Ranks">r_n of each adapter that has the module, in order.</param>
/// <param name="Form">The method's result (low-rank of some rank, or dense).</param>
/// <param name="OutRank">Rank written (adapter output) or used for the product: <see cref="Form"/>'s rank, or the re-rank N.</param>
/// <param name="TensorName">
/// The output tensor this module becomes in model and delta output: the base weight's name
/// (<c>Path.weight</c>); unused for adapter output.
/// </param>
/// <param name="Transposed">The base weight (and the written ΔW) is stored d_in × d_out: fan_in_fan_out, or an embedding.</param>
/// <param name="WorkingBytes">Estimated peak working memory of merging this module (inputs, method, result).</param>
/// <param name="Embedding">An embedding's LoRA (<see cref="LoraModule.Embedding"/>): PEFT's embedding keys, ΔW stored transposed.</param>
/// <param name="Adapters">The adapters that have this module (indices into <see cref="MergePlan.Adapters"/>); <see cref="Ranks"/> are theirs.</param>
public sealed record PlannedModule(
    string Path, int DOut, int DIn, IReadOnlyList<int> Ranks, ResultForm Form, int OutRank, string TensorName,
    bool Transposed, long WorkingBytes, IReadOnlyList<int> Adapters, bool Embedding = false)
{
    /// <summary>The module as <see cref="AdapterModules"/> reads it.</summary>
    internal AdapterModule Source => new(Path, Adapters);

    /// <summary>Bytes of the F32 factors read for this module (all adapters).</summary>
    public long InputBytes => Ranks.Sum(r => (long)r * (DIn + DOut)) * sizeof(float);

    /// <summary>Rows of the written weight (d_in when transposed).</summary>
    public int ProductRows => Transposed ? DIn : DOut;

    /// <summary>Columns of the written weight.</summary>
    public int ProductCols => Transposed ? DOut : DIn;
}

/// <summary>
/// A checked merge job, built from headers alone (<see cref="MergePlanner.Plan"/>): open inputs, the
/// module list in write order, the output layout and the memory plan. Nothing has been written yet.
/// </summary>
public sealed class MergePlan : IDisposable
{
    internal MergePlan(MergeRequest request, IMergeMethod method, IReadOnlyList<LoraAdapter> adapters, ShardedModel? baseModel)
    {
        Request = request;
        Method = method;
        Adapters = adapters;
        Base = baseModel;
    }

    /// <summary>The request, as given.</summary>
    public MergeRequest Request { get; }

    /// <summary>The merge method.</summary>
    public IMergeMethod Method { get; }

    /// <summary>The input adapters, open for reading.</summary>
    public IReadOnlyList<LoraAdapter> Adapters { get; }

    /// <summary>The base model, open for reading (model output, or when given).</summary>
    public ShardedModel? Base { get; }

    /// <summary>The full tensors beside the factors (modules_to_save, LLaVA's trainables, base-layer copies), by key.</summary>
    public IReadOnlyList<PlannedFullTensor> FullTensors { get; internal set; } = [];

    /// <summary>Every merged module, in the order the output needs them.</summary>
    public IReadOnlyList<PlannedModule> Modules { get; internal set; } = [];

    /// <summary>Stored type of the merged tensors (adapter and delta output; model output: null = base dtype per tensor).</summary>
    public DType? OutDType { get; internal set; }

    /// <summary>Output shards (model and delta output): tensors of each shard and the file names.</summary>
    public IReadOnlyList<IReadOnlyList<TensorSpec>> Shards { get; internal set; } = [];

    /// <summary>File names of <see cref="Shards"/>, or null for Hugging Face's default names.</summary>
    public IReadOnlyList<string>? ShardNames { get; internal set; }

    /// <summary>Total bytes of tensor data the output will hold.</summary>
    public long OutputBytes { get; internal set; }

    /// <summary>Rows per product tile (model and delta output of low-rank results).</summary>
    public int TileRowsFor(PlannedModule m) => (int)Math.Clamp(TileBytes / Math.Max(1L, (long)m.ProductCols * TileBytesPerElement), 1, m.ProductRows);

    /// <summary>The working-memory budget for one product tile (all its host and backend buffers).</summary>
    public long TileBytes { get; internal set; }

    /// <summary>
    /// Bytes one output element of a tile costs at most: two base tiles on the host (one read ahead while
    /// the other uploads) and one on the backend (4 + 4 + 4), the backend's output (4), and the four host
    /// output buffers of <see cref="TileStaging"/> (16: one being downloaded into, one waiting to be queued
    /// while the device computes the next tile, two in the write queue). The host tiles are the backend's
    /// staging buffers (page-locked on CUDA), kept for the whole merge and rounded up to 64 KiB.
    /// </summary>
    internal const int TileBytesPerElement = 32;

    /// <summary>Whether the next module's factors are read while the current one computes (it fits the budget twice).</summary>
    public bool Prefetch { get; internal set; }

    /// <summary>Estimated peak working memory of the whole job (excluding the .NET runtime itself).</summary>
    public long EstimatedPeakBytes { get; internal set; }

    /// <summary>The JSON inputs read whole at plan time (adapter configs, the base's index), with their identity then.</summary>
    internal List<(string Path, FileIdentity Identity)> ReadFiles { get; } = new();

    /// <summary>
    /// Throws <see cref="CopaInputException"/> naming the first input that changed since it was opened or
    /// read: the merge may have read two versions of it, so its output must not be committed.
    /// </summary>
    public void CheckInputsUnchanged()
    {
        foreach (var a in Adapters)
        {
            a.Weights.CheckUnchanged();
            a.Trainables?.CheckUnchanged();
        }
        if (Base != null) foreach (var s in Base.Shards) s.CheckUnchanged();
        foreach (var (path, identity) in ReadFiles)
            if (FileIdentity.ChangeAt(path, identity) is { } change)
                throw new CopaInputException(path, null, FileIdentity.ChangedReason(change));
    }

    /// <summary>
    /// A module's input error raised where only the adapter's index is known (<see cref="TaskInputException"/>),
    /// re-raised naming that adapter: its weights file for its values, else its folder.
    /// </summary>
    internal CopaInputException Named(TaskInputException e) =>
        new(e.Values ? Adapters[e.Task].Weights.Path : Adapters[e.Task].Folder, e.Tensor, e.Reason, e);

    /// <summary>As <see cref="Named(TaskInputException)"/>, for an error whose index is into <paramref name="adapters"/> (a module's own tasks).</summary>
    internal CopaInputException Named(TaskInputException e, IReadOnlyList<int> adapters) =>
        Named(new TaskInputException(adapters[e.Task], e.Tensor!, e.Reason, e.Values));

    /// <summary>Total bytes of the input files (adapters' weights, base shards).</summary>
    public long InputFileBytes => Adapters.Sum(a => a.Weights.FileLength + (a.Trainables?.FileLength ?? 0)) + (Base?.Shards.Sum(s => s.FileLength) ?? 0);

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var a in Adapters) a.Dispose();
        Base?.Dispose();
    }
}
