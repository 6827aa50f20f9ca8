using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>One published block: views of a registered LoRA's served weights at one projection inside another adapter's storage.</summary>
/// <param name="A"><c>[r, d_in]</c>.</param>
/// <param name="BT"><c>(s·B)ᵀ [r, d_out]</c>.</param>
/// <param name="Bias"><c>s·bias [d_out]</c>, or null when the LoRA has none.</param>
public sealed record SharedLoraBlock(Tensor A, Tensor BT, Tensor? Bias, SharedStorage Storage);

/// <summary>
/// Served LoRA weights that a loaded adapter already holds: a LoRA-Mixer stacks its registered experts' weights for its
/// fused GEMMs and publishes each expert's rows here, so the same LoRA called alone is loaded as views of those rows
/// instead of a second copy (issue 10: an expert used by a mixer is the same resident weights as when it is called
/// alone). Keyed by the expert's stored version (directory, version, content hash), layer, projection, device and
/// dtype; the values are equal whichever adapter built them (both are the served weights of
/// <see cref="LoraModules.Load"/>, cast once to the dtype). Thread-safe: loader threads look up; loads and disposals
/// publish and withdraw.
/// </summary>
internal static class SharedLoraWeights
{
    private static readonly Publications<Key, SharedLoraBlock> Published = new();

    private readonly record struct Key(string Directory, int Version, string ContentHash, DeviceType DeviceType, int DeviceIndex, ScalarType DType, int Layer, Projection Projection)
    {
        public static Key Of(AdapterRecord record, int layer, Projection projection, Device device, ScalarType dtype) =>
            new(record.Directory, record.Version, record.ContentHash, device.type, device.index, dtype, layer, projection);
    }

    /// <summary>
    /// Publishes <paramref name="expert"/>'s served weights at (<paramref name="layer"/>, <paramref name="projection"/>)
    /// as the views given (their ownership passes here). Disposing the result withdraws them and frees those views;
    /// the storage itself lives on while any LoRA loaded from it does.
    /// </summary>
    public static IDisposable Publish(AdapterRecord expert, int layer, Projection projection, SharedLoraBlock block)
    {
        ArgumentNullException.ThrowIfNull(expert);
        ArgumentNullException.ThrowIfNull(block);
        return Published.Publish(Key.Of(expert, layer, projection, block.A.device, block.A.dtype), block, withdrawn =>
        {
            withdrawn.A.Dispose();
            withdrawn.BT.Dispose();
            withdrawn.Bias?.Dispose();
        });
    }

    /// <summary>New views of a block published for <paramref name="record"/> at this projection on this device and dtype, or null.</summary>
    internal static SharedLoraBlock? TryView(AdapterRecord record, int layer, Projection projection, Device device, ScalarType dtype) =>
        Published.Use(Key.Of(record, layer, projection, device, dtype), block =>
        {
            using var inferenceOff = inference_mode(false);
            static Tensor View(Tensor t) => t.view(t.shape).DetachFromDisposeScope();   // a new handle on the same storage
            return new SharedLoraBlock(View(block.A), View(block.BT), block.Bias is null ? null : View(block.Bias), block.Storage);
        });
}
