using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.LoraMixer;

/// <summary>
/// One loaded LoRA-Mixer: a fused <see cref="MixerModule"/> and its <see cref="ExpertSite"/> (labels = expert names)
/// per routed projection, stacked from the experts' served LoRA weights (scalings already folded in). Owns its tensors.
/// </summary>
public sealed class MixerWeights : IDisposable
{
    private readonly Dictionary<(int Layer, Projection Projection), (MixerModule Module, ExpertSite Site)> _modules;

    private MixerWeights(LoraMixerConfig config, Dictionary<(int, Projection), (MixerModule, ExpertSite)> modules)
    {
        Config = config;
        _modules = modules;
        Bytes = modules.Values.Sum(m => m.Item1.Bytes);
    }

    public LoraMixerConfig Config { get; }
    public long Bytes { get; }
    public IEnumerable<(MixerModule Module, ExpertSite Site)> Modules => _modules.Values;

    public (MixerModule Module, ExpertSite Site)? Module(int layer, Projection projection) =>
        _modules.TryGetValue((layer, projection), out var m) ? m : null;

    /// <summary>Reads the routers of a validated mixer directory and stacks the experts under them.</summary>
    /// <param name="expert">The served LoRA weights of expert <c>name</c> at (layer, projection), or null where it does not adapt it.</param>
    public static MixerWeights Load(string directory, LoraMixerLayout layout, string adapterName, Func<string, int, Projection, ExpertDelta?> expert, Device device, ScalarType dtype)
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
        return new MixerWeights(config, modules);
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
        return new MixerWeights(Config, copies);
    }

    public void Dispose()
    {
        foreach (var (m, _) in _modules.Values) m.Dispose();
    }
}
