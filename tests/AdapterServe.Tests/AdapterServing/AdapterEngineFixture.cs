using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using Store = AdapterServe.Adapters.Store.AdapterStore;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterServing;

/// <summary>The real serving stack without HTTP: a store and registry, the residency cache, and an engine bound to them.</summary>
public sealed class AdapterEngineFixture : IAsyncDisposable
{
    public required TempDir Data { get; init; }
    public required GenerationEngine Engine { get; init; }
    public required Store Store { get; init; }
    public required AdapterResidencyCache Cache { get; init; }
    public required string ModelDirectory { get; init; }

    /// <param name="kinds">The adapter kinds the store accepts (default: the built-in ones).</param>
    public static async Task<AdapterEngineFixture> StartAsync(string modelDir, int maxDeviceAdapters = 8, int maxBatch = 8, AdapterKinds? kinds = null)
    {
        var config = ModelConfig.Load(Path.Combine(modelDir, "config.json"));
        var cache = new AdapterResidencyCache(new ResidencyOptions { MaxDeviceAdapters = maxDeviceAdapters }, baseWeights: null, CPU, ScalarType.Float32);
        var registry = new AdapterRegistry();
        var engine = await EngineRunner.StartAsync(modelDir, maxBatch: maxBatch, maxContext: 128, adapters: new RegistryAdapterBinder(registry, cache));
        var data = new TempDir();
        return new AdapterEngineFixture
        {
            ModelDirectory = modelDir, Cache = cache, Engine = engine, Data = data,
            Store = new Store(new AdapterStoreOptions { DataDirectory = data.Path }, config, cache, registry, kinds: kinds),
        };
    }

    public Task<AdapterCommit> RegisterAsync(string name, string directory, bool replace = false) => Store.RegisterPathAsync(name, directory, replace);

    public async ValueTask DisposeAsync()
    {
        await Engine.DisposeAsync();
        Cache.Dispose();
        Data.Dispose();
    }
}
