using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using Prometheus;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterStore;

/// <summary>The store with the real residency cache: leases keep replaced versions on disk; status comes from the cache.</summary>
public class AdapterStoreResidencyTests : IDisposable
{
    private readonly TempFolder _temp = new();
    private readonly AdapterResidencyCache _cache = new(
        new ResidencyOptions(),
        new AdapterMath.FuncBaseWeights((layer, p) => randn(TestAdapter.TinyBase.ProjectionShape(p).Out, TestAdapter.TinyBase.ProjectionShape(p).In)),
        CPU, ScalarType.Float32,
        metrics: new AdapterResidencyMetrics(Metrics.WithCustomRegistry(Metrics.NewCustomRegistry())));

    public void Dispose()
    {
        _cache.Dispose();
        _temp.Dispose();
    }

    private async Task<AdapterRecord> Put(global::AdapterServe.Adapters.Store.AdapterStore store, string name, TestAdapter adapter, bool replace)
    {
        using var staging = store.BeginStaging();
        adapter.WriteTo(staging.ReceivedDirectory);
        return (await store.CommitAsync(name, staging, replace, "test", TestContext.Current.CancellationToken)).Record;
    }

    [Fact]
    public async Task Leased_version_stays_on_disk_after_replace_until_its_lease_is_released()
    {
        var store = new global::AdapterServe.Adapters.Store.AdapterStore(
            new AdapterStoreOptions { DataDirectory = _temp.Sub("data"), RetiredVersionGraceSeconds = 0 }, TestAdapter.TinyBase, _cache, new AdapterRegistry());
        var v1 = await Put(store, "leased", TestAdapter.Lora(seed: 1), replace: false);
        var lease = _cache.Acquire(v1);
        await lease.HostLoaded;
        Assert.Equal(ResidencyTier.Host, _cache.Status("leased").Tier);

        var v2 = await Put(store, "leased", TestAdapter.Lora(seed: 2), replace: true);

        Assert.Equal(0, store.CollectRetiredVersions());
        Assert.True(Directory.Exists(v1.Directory));
        _cache.Release(lease);
        Assert.Equal(1, store.CollectRetiredVersions());
        Assert.False(Directory.Exists(v1.Directory));

        var second = _cache.Acquire(v2);
        await second.HostLoaded;
        Assert.True(_cache.TryGetReady(second, out var loaded));
        Assert.Equal(2, loaded.Record.Version);
        _cache.Release(second);
    }
}
