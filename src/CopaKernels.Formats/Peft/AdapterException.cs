namespace CopaKernels.Formats.Peft;

/// <summary>An adapter that cannot be read, or cannot be merged exactly (DoRA, LoRA bias, embeddings...).</summary>
public sealed class AdapterException(string? path, string? tensor, string reason, Exception? inner = null)
    : CopaInputException(path, tensor, reason, inner);
