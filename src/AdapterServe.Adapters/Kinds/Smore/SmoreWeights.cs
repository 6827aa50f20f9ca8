using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// One version of one S'MoRE adapter, loaded: an <see cref="SmoreModule"/> per adapted (layer, projection), the modules
/// at sibling projections of one structure stacked (<see cref="SmoreSiblings"/>), and the <see cref="ExpertSite"/> under
/// which each module's selections are counted (experts labelled <c>l&lt;level&gt;.&lt;index&gt;</c>). Owns its tensors.
/// </summary>
public sealed class SmoreWeights : IAdapterModules
{
    private readonly Dictionary<(int Layer, Projection Projection), SmoreModule> _modules;
    private readonly Dictionary<(int Layer, Projection Projection), ExpertSite> _sites;
    private readonly Dictionary<(int Layer, Projection First), SmoreSiblings> _siblings = [];   // keyed by the sibling set's first projection

    /// <summary>Takes over <paramref name="modules"/>; those at sibling projections of one structure are replaced by views of their stacked trees.</summary>
    private SmoreWeights(string adapter, SmoreDescription description, Dictionary<(int, Projection), SmoreModule> modules)
    {
        Adapter = adapter;
        Description = description;
        _modules = modules;
        try
        {
            SiblingModules.StoreSideBySide(modules, (a, b) => a.Signature.Equals(b.Signature), SmoreSiblings.Of, s => s.Modules, _siblings);
        }
        catch
        {
            Dispose();
            throw;
        }
        var labels = description.ExpertLabels;
        _sites = modules.Keys.ToDictionary(k => k, k => new ExpertSite(adapter, k.Item1, k.Item2, labels));
        Bytes = modules.Values.Sum(m => m.Bytes);
        Signatures = modules.Values.Select(m => m.Signature).ToHashSet();
    }

    public string Adapter { get; }
    public SmoreDescription Description { get; }
    public long Bytes { get; }
    public IReadOnlyCollection<SmoreModule> Modules => _modules.Values;
    /// <summary>The distinct structures of its modules (one per distinct base projection shape; all modules share the config).</summary>
    public IReadOnlySet<SmoreSignature> Signatures { get; }

    public SmoreModule? Module(int layer, Projection projection) => _modules.GetValueOrDefault((layer, projection));

    /// <summary>The stacked modules of this adapter at <paramref name="projections"/> (a sibling set of <paramref name="layer"/>), or null when it does not adapt two or more of them with one structure.</summary>
    public SmoreSiblings? Siblings(int layer, IReadOnlyList<Projection> projections) => SiblingModules.Lookup(_siblings, layer, projections, s => s.Projections);

    public bool Targets(int layer, Projection projection) => _modules.ContainsKey((layer, projection));

    /// <summary>The accounting site of one module (built once at load).</summary>
    public ExpertSite Site(int layer, Projection projection) => _sites[(layer, projection)];

    /// <summary>Reads <c>adapter_model.safetensors</c> of <paramref name="directory"/> into float32 tensors on <paramref name="device"/>.</summary>
    public static SmoreWeights Load(string adapter, string directory, SmoreDescription description, Device device)
    {
        string path = Path.Combine(directory, SmoreValidator.WeightsFileName);
        try
        {
            using var file = SafetensorsFile.Open(path);
            return FromTensors(adapter, description, key => file.Tensors.ContainsKey(key) ? file.Read(key, ScalarType.Float32, CPU) : null, device);
        }
        catch (SafetensorsFormatException e)
        {
            throw new AdapterValidationException($"adapter '{adapter}': {e.Message}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new AdapterValidationException($"adapter '{adapter}': cannot read {path}: {e.Message}", "adapter_unreadable", 500);
        }
    }

    /// <param name="stored">The tensor stored under a full key (<c>{TensorPrefix}.moe_A.0</c>), or null.</param>
    public static SmoreWeights FromTensors(string adapter, SmoreDescription description, Func<string, Tensor?> stored, Device device)
    {
        var modules = new Dictionary<(int, Projection), SmoreModule>();
        try
        {
            foreach (var spec in description.Modules)
            {
                using var scope = NewDisposeScope();
                modules.Add((spec.Layer, spec.Projection), SmoreModule.FromTensors(description.Config, spec.Layer, spec.Projection, spec.InFeatures, spec.OutFeatures,
                    suffix => stored($"{spec.TensorPrefix}.{suffix}"), device, spec.TensorPrefix));
            }
        }
        catch
        {
            foreach (var m in modules.Values) m.Dispose();
            throw;
        }
        return new SmoreWeights(adapter, description, modules);
    }

    /// <summary>A copy on <paramref name="device"/> (host tier → device tier).</summary>
    IAdapterModules IAdapterModules.To(Device device) => To(device);

    public SmoreWeights To(Device device)
    {
        var copies = new Dictionary<(int, Projection), SmoreModule>();
        try
        {
            foreach (var (key, module) in _modules) copies.Add(key, module.To(device));
        }
        catch
        {
            foreach (var m in copies.Values) m.Dispose();
            throw;
        }
        return new SmoreWeights(Adapter, Description, copies);
    }

    public void Dispose()
    {
        foreach (var m in _modules.Values) m.Dispose();
        foreach (var s in _siblings.Values) s.Dispose();
    }
}
