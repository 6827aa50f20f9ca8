using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Bench.Adapters;

/// <param name="DeviceSlots">Adapter versions resident on the device at once (the residency cache's device tier).</param>
/// <param name="HostSlots">Adapter versions kept as CPU tensors in front of the disk (the host tier).</param>
public sealed record AdapterRoomOptions(ModelConfig Model, string Dtype, string Device, int DeviceSlots, int HostSlots);

/// <summary>
/// The Adapters room as the server composes it, without HTTP or the store's file copies: a registry, the residency
/// cache (device slots behind an LRU, a host tier in front of the disk) and the
/// <see cref="RegistryAdapterBinder"/> over both. Each distinct PEFT directory is validated once, as the store
/// would, and any number of names can then be published on it.
/// </summary>
public sealed class AdapterRoom : IAsyncDisposable
{
    private readonly ModelConfig _model;
    private readonly Dictionary<string, (AdapterDescription Description, string Hash)> _validated = new(StringComparer.Ordinal);

    private AdapterRoom(AdapterRoomOptions options, ILoggerFactory? loggers)
    {
        _model = options.Model;
        var device = GenerationEngine.ParseDevice(options.Device);
        // No base weights yet: the engine hands them to the room through the binder once its model is loaded.
        Cache = new AdapterResidencyCache(
            new ResidencyOptions { MaxDeviceAdapters = options.DeviceSlots, MaxHostAdapters = options.HostSlots },
            baseWeights: null, device, ComputeTarget.AdapterDtype(GenerationEngine.ParseDtype(options.Dtype, device), device), loggers?.CreateLogger<AdapterResidencyCache>());
        Binder = new RegistryAdapterBinder(Registry, Cache);
    }

    public AdapterRegistry Registry { get; } = new();
    public AdapterResidencyCache Cache { get; }
    /// <summary>Hand this to the engine at start.</summary>
    public IAdapterBinder Binder { get; }

    /// <param name="loggers">For the residency cache's log (loads, promotions, evictions; shown with <c>--verbose</c>).</param>
    public static AdapterRoom Open(AdapterRoomOptions options, ILoggerFactory? loggers = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.DeviceSlots < 1) throw new UsageException($"the adapter device cache needs at least 1 slot, not {options.DeviceSlots}");
        if (options.HostSlots < 1) throw new UsageException($"the adapter host cache needs at least 1 slot, not {options.HostSlots}");
        return new AdapterRoom(options, loggers);
    }

    /// <summary>Publishes <paramref name="directory"/> under <paramref name="name"/> (version 1), validating the directory the first time it is seen.</summary>
    /// <exception cref="BenchException">The directory is not a valid adapter for the model.</exception>
    public AdapterRecord Register(string name, string directory) => Publish(name, directory, 1);

    /// <summary>
    /// Makes <paramref name="directory"/> version <paramref name="version"/> of <paramref name="name"/> (a load, or a replace
    /// when the name exists), as the store does: running requests keep the version they leased; cached weights of versions
    /// nobody uses are dropped.
    /// </summary>
    /// <exception cref="BenchException">The directory is not a valid adapter for the model.</exception>
    public AdapterRecord Publish(string name, string directory, int version)
    {
        string dir = Path.GetFullPath(directory);
        if (!_validated.TryGetValue(dir, out var known))
        {
            try
            {
                var description = AdapterValidator.Validate(dir, _model);
                var (hash, _) = ContentHash.Compute(dir, description.Handler.Files.Find(dir));
                _validated[dir] = known = (description, hash);
            }
            catch (AdapterValidationException e)
            {
                throw new BenchException($"adapter '{name}' at {dir} is not valid for the model: {e.Message}", e);
            }
        }
        var now = DateTimeOffset.UtcNow;
        var record = new AdapterRecord(name, version, dir, known.Description, known.Hash, "bench", now, now);
        bool replaced = Registry.TryResolve(name, out _);
        Registry.Publish(record);
        if (replaced) Cache.Forget(name);
        return record;
    }

    /// <summary>Withdraws <paramref name="name"/> (an unload): new requests no longer find it, running ones finish on their lease.</summary>
    public void Unregister(string name)
    {
        Registry.Remove(name);
        Cache.Forget(name);
    }

    /// <summary>Disposes the cached adapter tensors; dispose the engine first.</summary>
    public ValueTask DisposeAsync()
    {
        Cache.Dispose();
        return ValueTask.CompletedTask;
    }
}
