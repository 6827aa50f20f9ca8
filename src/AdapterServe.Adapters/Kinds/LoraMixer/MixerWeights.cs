using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.LoraMixer;

/// <summary>
/// One loaded LoRA-Mixer: a fused <see cref="MixerModule"/> and its <see cref="ExpertSite"/> (labels = expert names)
/// per routed projection, stacked from the experts' served LoRA weights (scalings already folded in). The rows of each
/// registered expert are published (<see cref="SharedLoraWeights"/>) while these weights live, so that LoRA called
/// alone on the same device is served from them instead of a copy of its own. Owns its tensors.
/// </summary>
public sealed class MixerWeights : IDisposable
{
    private readonly Dictionary<(int Layer, Projection Projection), (MixerModule Module, ExpertSite Site)> _modules;
    private readonly IReadOnlyList<AdapterRecord?> _expertRecords;    // per expert: its registered version, null when embedded
    private readonly List<IDisposable> _publications = [];

    private MixerWeights(LoraMixerConfig config, Dictionary<(int, Projection), (MixerModule, ExpertSite)> modules, IReadOnlyList<AdapterRecord?> expertRecords)
    {
        Config = config;
        _modules = modules;
        _expertRecords = expertRecords;
        Bytes = modules.Values.Sum(m => m.Item1.RouterBytes);
        Shared = modules.Values.Select(m => m.Item1.Storage).ToList();
        foreach (var ((layer, projection), (module, _)) in modules)
            for (int e = 0; e < expertRecords.Count; e++)
                if (expertRecords[e] is { } expert && module.ExpertBlock(e) is { } block)
                    _publications.Add(SharedLoraWeights.Publish(expert, layer, projection, block));
    }

    public LoraMixerConfig Config { get; }
    /// <summary>Bytes of the routers (the mixer's own tensors).</summary>
    public long Bytes { get; }
    /// <summary>The expert stacks, one per routed projection.</summary>
    public IReadOnlyCollection<SharedStorage> Shared { get; }
    public IEnumerable<(MixerModule Module, ExpertSite Site)> Modules => _modules.Values;

    public (MixerModule Module, ExpertSite Site)? Module(int layer, Projection projection) =>
        _modules.TryGetValue((layer, projection), out var m) ? m : null;

    /// <summary>Reads the routers of a validated mixer directory and stacks the experts under them.</summary>
    /// <param name="expert">The served LoRA weights of expert <c>name</c> at (layer, projection), or null where it does not adapt it.</param>
    /// <param name="expertRecords">Per expert of <c>layout.Config.Experts</c>: its registered version, or null when embedded.</param>
    public static MixerWeights Load(string directory, LoraMixerLayout layout, string adapterName, Func<string, int, Projection, ExpertDelta?> expert,
        IReadOnlyList<AdapterRecord?> expertRecords, Device device, ScalarType dtype)
    {
        const string file = LoraMixerConfig.RouterFileName;
        var config = layout.Config;
        var modules = new Dictionary<(int, Projection), (MixerModule, ExpertSite)>();
        using var routers = MixtureTensors.Open(Path.Combine(directory, file), file);
        using var inferenceOff = inference_mode(false);
        try
        {
            foreach (var spec in layout.Routers)
            {
                using var scope = NewDisposeScope();
                var router = routers.Read($"{spec.TensorPrefix}.router.weight", ScalarType.Float32, CPU);                  // [E, d_in]
                var bias = spec.HasBias ? routers.Read($"{spec.TensorPrefix}.router.bias", ScalarType.Float32, CPU) : null; // [E]
                var deltas = config.Experts.Select(name => expert(name, spec.Layer, spec.Projection)).ToList();
                var module = MixerModule.Build(router, bias, deltas, config.TopK, config.Renormalize, device, dtype);
                modules.Add((spec.Layer, spec.Projection), (module, new ExpertSite(adapterName, spec.Layer, spec.Projection, config.Experts)));
            }
        }
        catch
        {
            foreach (var (m, _) in modules.Values) m.Dispose();
            throw;
        }
        return new MixerWeights(config, modules, expertRecords);
    }

    /// <summary>A copy on <paramref name="device"/> (host tier → device tier).</summary>
    public MixerWeights To(Device device)
    {
        var copies = new Dictionary<(int, Projection), (MixerModule, ExpertSite)>();
        try
        {
            foreach (var (key, (module, site)) in _modules) copies.Add(key, (module.To(device), site));
        }
        catch
        {
            foreach (var (m, _) in copies.Values) m.Dispose();
            throw;
        }
        return new MixerWeights(Config, copies, _expertRecords);
    }

    public void Dispose()
    {
        foreach (var p in _publications) p.Dispose();
        _publications.Clear();
        foreach (var (m, _) in _modules.Values) m.Dispose();
    }
}
