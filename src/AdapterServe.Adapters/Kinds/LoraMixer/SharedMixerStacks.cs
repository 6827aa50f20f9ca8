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
    private static readonly object Gate = new();
    private static readonly Dictionary<Key, List<Publication>> Published = [];

    private readonly record struct Key(string Experts, int Layer, Projection Projection, DeviceType DeviceType, int DeviceIndex, ScalarType DType);

    /// <summary>The experts' identity: each one's stored version (directory, version, content hash), in router order.</summary>
    public static string Identity(IEnumerable<AdapterRecord> experts) =>
        string.Join("\u0001", experts.Select(e => $"{e.Directory}\u0002{e.Version}\u0002{e.ContentHash}"));

    /// <summary>Publishes <paramref name="module"/>'s stack; disposing the result withdraws it (before the module is disposed).</summary>
    public static IDisposable Publish(string experts, int layer, Projection projection, MixerModule module)
    {
        var publication = new Publication(new Key(experts, layer, projection, module.AAll.device.type, module.AAll.device.index, module.AAll.dtype), module);
        lock (Gate)
        {
            if (!Published.TryGetValue(publication.Key, out var list)) Published[publication.Key] = list = [];
            list.Add(publication);
        }
        return publication;
    }

    /// <summary>A module over a published stack of the same experts with this router, or null when none is loaded.</summary>
    public static MixerModule? TryWithRouter(string experts, int layer, Projection projection, Device device, ScalarType dtype,
        Tensor router, Tensor? routerBias, int topK, bool renormalize)
    {
        lock (Gate)
        {
            if (!Published.TryGetValue(new Key(experts, layer, projection, device.type, device.index, dtype), out var list) || list.Count == 0) return null;
            return list[0].Module.WithRouter(router, routerBias, topK, renormalize);
        }
    }

    private sealed class Publication(Key key, MixerModule module) : IDisposable
    {
        public Key Key { get; } = key;
        public MixerModule Module { get; } = module;

        public void Dispose()
        {
            lock (Gate)
                if (Published.TryGetValue(Key, out var list) && list.Remove(this) && list.Count == 0) Published.Remove(Key);
        }
    }
}
