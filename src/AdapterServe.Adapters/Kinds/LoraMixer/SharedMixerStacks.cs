using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.LoraMixer;

/// <summary>
/// The expert stacks of loaded LoRA-Mixers, by the experts they stack: a mixer over the same experts (the same stored
/// versions in the same order) at the same projection, device and dtype takes views of a loaded one's stack under its
/// own router (<see cref="MixerModule.WithRouter"/>) instead of stacking a copy, e.g. several routers composed over one
/// team's LoRAs with <c>POST /v1/mixers</c>. Thread-safe: loads and disposals publish and withdraw.
/// </summary>
internal static class SharedMixerStacks
{
    private static readonly Publications<Key, MixerModule> Published = new();

    private readonly record struct Key(string Experts, int Layer, Projection Projection, DeviceType DeviceType, int DeviceIndex, ScalarType DType);

    /// <summary>The experts' identity: each one's stored version (directory, version, content hash), in router order.</summary>
    public static string Identity(IEnumerable<AdapterRecord> experts) =>
        string.Join("\u0001", experts.Select(e => $"{e.Directory}\u0002{e.Version}\u0002{e.ContentHash}"));

    /// <summary>Publishes <paramref name="module"/>'s stack; disposing the result withdraws it (before the module is disposed).</summary>
    public static IDisposable Publish(string experts, int layer, Projection projection, MixerModule module) =>
        Published.Publish(new Key(experts, layer, projection, module.AAll.device.type, module.AAll.device.index, module.AAll.dtype), module);

    /// <summary>A module over a published stack of the same experts with this router, or null when none is loaded.</summary>
    public static MixerModule? TryWithRouter(string experts, int layer, Projection projection, Device device, ScalarType dtype,
        Tensor router, Tensor? routerBias, int topK, bool renormalize) =>
        Published.Use(new Key(experts, layer, projection, device.type, device.index, dtype), module => module.WithRouter(router, routerBias, topK, renormalize));
}
