using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.LoraMixer;

/// <summary>One expert of a loaded mixer: its stored version (an embedded expert's is under the mixer's folder) and whether it is a registered adapter of its own.</summary>
public sealed record MixerExpertSource(AdapterRecord Record, bool Registered);

/// <summary>
/// One loaded LoRA-Mixer: a fused <see cref="MixerModule"/> and its <see cref="ExpertSite"/> (labels = expert names)
/// per routed projection, stacked from the experts' served LoRA weights (scalings already folded in). While these
/// weights live, each stack is published (<see cref="SharedMixerStacks"/>: another mixer over the same experts takes
/// views of it), and so are the rows of each registered expert (<see cref="SharedLoraWeights"/>: that LoRA called
/// alone on the same device is served from them instead of a copy of its own). Owns its tensors.
/// </summary>
public sealed class MixerWeights : IDisposable
{
    private readonly Dictionary<(int Layer, Projection Projection), (MixerModule Module, ExpertSite Site)> _modules;
    private readonly IReadOnlyList<MixerExpertSource> _experts;
    private readonly List<IDisposable> _publications = [];

    private MixerWeights(LoraMixerConfig config, Dictionary<(int, Projection), (MixerModule, ExpertSite)> modules, IReadOnlyList<MixerExpertSource> experts)
    {
        Config = config;
        _modules = modules;
        _experts = experts;
        Bytes = modules.Values.Sum(m => m.Item1.RouterBytes);
        Shared = modules.Values.Select(m => m.Item1.Storage).Distinct().ToList();
        string identity = SharedMixerStacks.Identity(experts.Select(e => e.Record));
        foreach (var ((layer, projection), (module, _)) in modules)
        {
            _publications.Add(SharedMixerStacks.Publish(identity, layer, projection, module));
            for (int e = 0; e < experts.Count; e++)
                if (experts[e].Registered && module.ExpertBlock(e) is { } block)
                    _publications.Add(SharedLoraWeights.Publish(experts[e].Record, layer, projection, block));
        }
    }

    public LoraMixerConfig Config { get; }
    /// <summary>Bytes of the routers (the mixer's own tensors).</summary>
    public long Bytes { get; }
    /// <summary>The expert stacks, one per routed projection.</summary>
    public IReadOnlyCollection<SharedStorage> Shared { get; }
    public IEnumerable<(MixerModule Module, ExpertSite Site)> Modules => _modules.Values;

    public (MixerModule Module, ExpertSite Site)? Module(int layer, Projection projection) =>
        _modules.TryGetValue((layer, projection), out var m) ? m : null;

    /// <summary>
    /// Reads the routers of a validated mixer directory and stacks the experts under them, or takes views of the stack
    /// of a loaded mixer over the same experts (<see cref="SharedMixerStacks"/>), where there is one.
    /// </summary>
    /// <param name="experts">Per expert of <c>layout.Config.Experts</c>: its stored version.</param>
    /// <param name="expert">The served LoRA weights of expert <c>i</c> at (layer, projection), or null where it does not adapt it (read only for stacks not already loaded).</param>
    public static MixerWeights Load(string directory, LoraMixerLayout layout, string adapterName, IReadOnlyList<MixerExpertSource> experts,
        Func<int, int, Projection, ExpertDelta?> expert, Device device, ScalarType dtype)
    {
        string identity = SharedMixerStacks.Identity(experts.Select(e => e.Record));
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
                var module = SharedMixerStacks.TryWithRouter(identity, spec.Layer, spec.Projection, device, dtype, router, bias, config.TopK, config.Renormalize)
                    ?? MixerModule.Build(router, bias, [.. experts.Select((_, i) => expert(i, spec.Layer, spec.Projection))], config.TopK, config.Renormalize, device, dtype);
                modules.Add((spec.Layer, spec.Projection), (module, new ExpertSite(adapterName, spec.Layer, spec.Projection, config.Experts)));
            }
        }
        catch
        {
            foreach (var (m, _) in modules.Values) m.Dispose();
            throw;
        }
        return new MixerWeights(config, modules, experts);
    }

    /// <summary>A copy on <paramref name="device"/> (host tier → device tier); views of a stack of the same experts already there.</summary>
    public MixerWeights To(Device device)
    {
        string identity = SharedMixerStacks.Identity(_experts.Select(e => e.Record));
        var copies = new Dictionary<(int, Projection), (MixerModule, ExpertSite)>();
        try
        {
            foreach (var (key, (module, site)) in _modules)
                copies.Add(key, (SharedMixerStacks.TryWithRouter(identity, key.Item1, key.Item2, device, module.AAll.dtype, module.Router, module.RouterBias, module.TopK, module.Renormalize)
                    ?? module.To(device), site));
        }
        catch
        {
            foreach (var (m, _) in copies.Values) m.Dispose();
            throw;
        }
        return new MixerWeights(Config, copies, _experts);
    }

    public void Dispose()
    {
        foreach (var p in _publications) p.Dispose();
        _publications.Clear();
        foreach (var (m, _) in _modules.Values) m.Dispose();
    }
}
