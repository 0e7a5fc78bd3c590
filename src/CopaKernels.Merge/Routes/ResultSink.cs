using CopaKernels.Formats.Safetensors;

namespace CopaKernels.Merge.Routes;

/// <summary>
/// Where a merge's results go: F32 arrays (from the streaming feed's pool, which gets them back once
/// written, or fresh), or, when the run writes a method's exact result as it is (adapter output of the
/// method's own rank), the bytes of the output dtype, which the write queue takes over.
/// </summary>
/// <param name="pool">The pool result arrays come from, or null for fresh arrays.</param>
/// <param name="encodeAs">The output dtype a result may be handed back in already (<see cref="LowRankResult.Encoded"/>), or null.</param>
internal sealed class ResultSink(Streaming.FactorPool? pool, DType? encodeAs)
{
    /// <summary>Fresh F32 arrays: the results of a merge called directly, which the caller keeps.</summary>
    public static ResultSink FreshArrays { get; } = new(null, null);

    /// <summary>The dtype a method may encode its result in itself, or null when it hands back F32.</summary>
    public DType? EncodeAs => encodeAs;

    /// <summary>An uninitialised array of <paramref name="length"/> floats for a result.</summary>
    public float[] Floats(int length) => pool?.Rent(length) ?? GC.AllocateUninitializedArray<float>(length);

    /// <summary>A buffer of at least <paramref name="length"/> bytes for an encoded result, from the write queue's pool (it returns it once written).</summary>
    public static byte[] Bytes(int length) => Streaming.WriteQueue.Rent(length);
}
