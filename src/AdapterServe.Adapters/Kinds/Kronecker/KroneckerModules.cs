using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>The loaded modules of one LoKr or MoKA adapter: a <see cref="KroneckerWeights"/> per adapted (layer, projection). Owns its tensors.</summary>
public sealed class KroneckerModules : IAdapterModules
{
    private readonly Dictionary<(int Layer, Projection Projection), KroneckerWeights> _modules;

    private KroneckerModules(Dictionary<(int, Projection), KroneckerWeights> modules)
    {
        _modules = modules;
        Bytes = modules.Values.Sum(m => m.Bytes);
    }

    /// <summary>Bytes of the served factors (low-rank factors multiplied out, components stacked).</summary>
    public long Bytes { get; }
    public IReadOnlyCollection<KroneckerWeights> All => _modules.Values;

    public KroneckerWeights? Module(int layer, Projection projection) => _modules.GetValueOrDefault((layer, projection));

    public bool Targets(int layer, Projection projection) => _modules.ContainsKey((layer, projection));

    /// <summary>Reads <c>adapter_model.safetensors</c> of <paramref name="record"/>'s directory and builds every module.</summary>
    public static KroneckerModules Load(AdapterRecord record, Device device, ScalarType dtype)
    {
        var path = Path.Combine(record.Directory, AdapterFiles.WeightsFileName);
        try
        {
            using var file = SafetensorsFile.Open(path);
            return FromTensors(record, key => file.Tensors.ContainsKey(key) ? file.Read(key, ScalarType.Float32, CPU) : null, device, dtype);
        }
        catch (SafetensorsFormatException e)
        {
            throw new AdapterValidationException($"{Describe(record)}: {e.Message}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new AdapterValidationException($"{Describe(record)}: cannot read {path}: {e.Message}", "adapter_unreadable", 500);
        }
    }

    /// <param name="tensor">The stored tensor under a full key, or null when absent; only read.</param>
    public static KroneckerModules FromTensors(AdapterRecord record, Func<string, Tensor?> tensor, Device device, ScalarType dtype)
    {
        var description = record.Description as KroneckerDescription
            ?? throw new ArgumentException($"{Describe(record)} is a '{record.Description.Kind}' adapter, not a LoKr or MoKA one", nameof(record));
        var modules = new Dictionary<(int, Projection), KroneckerWeights>();
        try
        {
            foreach (var spec in description.Modules)
            {
                if (modules.ContainsKey((spec.Layer, spec.Projection)))
                    throw new AdapterValidationException($"{Describe(record)}: {spec.ModulePath} is listed twice");
                modules.Add((spec.Layer, spec.Projection), KroneckerLoading.LoadModule(description.IsMoka, spec, tensor, device, dtype));
            }
        }
        catch (AdapterValidationException e)
        {
            foreach (var m in modules.Values) m.Dispose();
            throw new AdapterValidationException($"{Describe(record)}: {e.Message}", e.Code, e.StatusCode);
        }
        catch
        {
            foreach (var m in modules.Values) m.Dispose();
            throw;
        }
        return new KroneckerModules(modules);
    }

    public IAdapterModules To(Device device)
    {
        var copies = new Dictionary<(int, Projection), KroneckerWeights>();
        try
        {
            foreach (var (key, module) in _modules) copies.Add(key, module.To(device));
        }
        catch
        {
            foreach (var m in copies.Values) m.Dispose();
            throw;
        }
        return new KroneckerModules(copies);
    }

    public void Dispose()
    {
        foreach (var m in _modules.Values) m.Dispose();
    }

    private static string Describe(AdapterRecord record) => $"adapter '{record.Name}' v{record.Version}";
}
