using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Omoe;

/// <summary>
/// One loaded OMoE adapter: an <see cref="OmoeModule"/> and its <see cref="ExpertSite"/> per adapted projection, the
/// modules at sibling projections of a layer stored side by side (<see cref="OmoeSiblings"/>). Owns its tensors.
/// </summary>
public sealed class OmoeWeights : IDisposable
{
    private readonly Dictionary<(int Layer, Projection Projection), (OmoeModule Module, ExpertSite Site)> _modules;
    private readonly Dictionary<(int Layer, Projection First), OmoeSiblings> _siblings = [];   // keyed by the sibling set's first projection

    /// <summary>Takes over <paramref name="modules"/>; those at sibling projections are replaced by views of their side-by-side storage.</summary>
    private OmoeWeights(OmoeConfig config, Dictionary<(int, Projection), (OmoeModule, ExpertSite)> modules)
    {
        Config = config;
        _modules = modules;
        try
        {
            SiblingModules.StoreSideBySide(modules, (a, b) => OmoeSiblings.Compatible(a.Item1, b.Item1), OmoeSiblings.Of, s => s.Modules, _siblings);
        }
        catch
        {
            Dispose();
            throw;
        }
        Bytes = modules.Values.Sum(m => m.Item1.Bytes);
    }

    public OmoeConfig Config { get; }
    public long Bytes { get; }
    public IEnumerable<(OmoeModule Module, ExpertSite Site)> Modules => _modules.Values;

    public (OmoeModule Module, ExpertSite Site)? Module(int layer, Projection projection) =>
        _modules.TryGetValue((layer, projection), out var m) ? m : null;

    /// <summary>The side-by-side modules of this adapter at <paramref name="projections"/> (a sibling set of <paramref name="layer"/>), or null when it adapts fewer than two of them.</summary>
    public OmoeSiblings? Siblings(int layer, IReadOnlyList<Projection> projections) => SiblingModules.Lookup(_siblings, layer, projections, s => s.Projections);

    /// <summary>Reads <c>adapter_model.safetensors</c> of a validated directory into stacked modules on <paramref name="device"/>.</summary>
    public static OmoeWeights Load(string directory, OmoeLayout layout, string adapterName, Device device, ScalarType dtype)
    {
        const string file = OmoeConfig.WeightsFileName;
        var config = layout.Config;
        var labels = ExpertSite.Indexed(config.NumExperts);
        var modules = new Dictionary<(int, Projection), (OmoeModule, ExpertSite)>();
        using var weights = MixtureTensors.Open(Path.Combine(directory, file), file);
        using var inferenceOff = inference_mode(false);
        try
        {
            foreach (var spec in layout.Modules)
            {
                using var scope = NewDisposeScope();
                Tensor Read(string suffix) => weights.Read($"{spec.TensorPrefix}.{suffix}", ScalarType.Float32, CPU);
                var a = Enumerable.Range(0, config.NumExperts).Select(i => Read($"omoe_A.{i}")).ToList();      // n × [r, d_in]
                var b = Enumerable.Range(0, config.NumExperts).Select(i => Read($"omoe_B.{i}")).ToList();      // n × [d_out, r]
                var module = OmoeModule.Build(Read("omoe_router.weight"), a, b, config.Scaling, config.TopK, config.RescaleNorm, config.Eps, device, dtype);
                modules.Add((spec.Layer, spec.Projection), (module, new ExpertSite(adapterName, spec.Layer, spec.Projection, labels)));
            }
        }
        catch
        {
            foreach (var (m, _) in modules.Values) m.Dispose();
            throw;
        }
        return new OmoeWeights(config, modules);
    }

    /// <summary>A copy on <paramref name="device"/> (host tier → device tier).</summary>
    public OmoeWeights To(Device device)
    {
        var copies = new Dictionary<(int, Projection), (OmoeModule, ExpertSite)>();
        try
        {
            foreach (var (key, (module, site)) in _modules) copies.Add(key, (module.To(device), site));
        }
        catch
        {
            foreach (var (m, _) in copies.Values) m.Dispose();
            throw;
        }
        return new OmoeWeights(Config, copies);
    }

    public void Dispose()
    {
        foreach (var (m, _) in _modules.Values) m.Dispose();
        foreach (var s in _siblings.Values) s.Dispose();
    }
}
