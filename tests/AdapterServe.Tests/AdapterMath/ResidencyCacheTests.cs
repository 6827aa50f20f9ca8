using System.Collections.Concurrent;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Modeling;
using Prometheus;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterMath;

/// <summary>The two-tier residency cache: LRU by count and bytes, pins, leases, versions, failures, bounded memory.</summary>
public class ResidencyCacheTests
{
    static readonly TimeSpan LoadTimeout = TimeSpan.FromSeconds(20);

    /// <summary>Test adapters by (name, version), and a loader that builds them (optionally held back by a gate).</summary>
    sealed class Catalog
    {
        readonly ConcurrentDictionary<(string, int), TestAdapter> _adapters = new();
        public TestBase Model { get; } = new();
        public ConcurrentBag<LoadedAdapter> Produced { get; } = [];
        public ManualResetEventSlim Gate { get; } = new(initialState: true);

        /// <summary>An adapter with one rank-4 q_proj module: (4·16 + 16·4) float32 = 512 bytes.</summary>
        public AdapterRecord Add(string name, int version = 1, int seed = 1)
        {
            var adapter = new TestAdapter(name, version, seed).Module(0, Projection.Q, rank: 4, scaling: 2.0);
            _adapters[(name, version)] = adapter;
            return adapter.Record();
        }

        public TestAdapter Get(string name, int version = 1) => _adapters[(name, version)];

        public LoadedAdapter Load(AdapterRecord record)
        {
            Gate.Wait(LoadTimeout);
            var source = _adapters[(record.Name, record.Version)];
            var loaded = LoraKind.FromTensors(record, k => source.Tensors.GetValueOrDefault(k), Model, CPU, ScalarType.Float32);
            Produced.Add(loaded);
            return loaded;
        }
    }

    const long AdapterBytes = 512;

    static AdapterResidencyCache NewCache(Catalog catalog, ResidencyOptions options) =>
        new(options, catalog.Load, CPU, metrics: new AdapterResidencyMetrics(Metrics.WithCustomRegistry(Metrics.NewCustomRegistry())));

    static void WaitLoaded(AdapterLease lease) =>
        Assert.True(lease.HostLoaded.Wait(LoadTimeout, TestContext.Current.CancellationToken), $"{lease}: load did not finish");

    static LoadedAdapter Ready(AdapterResidencyCache cache, AdapterLease lease)
    {
        WaitLoaded(lease);
        Assert.True(cache.TryGetReady(lease, out var adapter), $"{lease}: not ready after its load");
        return adapter;
    }

    /// <summary>One short request: acquire, run (ready on the device), release.</summary>
    static void Use(AdapterResidencyCache cache, AdapterRecord record)
    {
        var lease = cache.Acquire(record);
        Ready(cache, lease);
        cache.Release(lease);
    }

    static ResidencyTier Tier(AdapterResidencyCache cache, string name) => cache.Status(name).Tier;

    [Fact]
    public void Device_tier_evicts_the_least_recently_used_adapter_when_the_count_is_reached()
    {
        var catalog = new Catalog();
        using var cache = NewCache(catalog, new ResidencyOptions { MaxDeviceAdapters = 2 });
        var a = catalog.Add("a");
        var b = catalog.Add("b");
        var c = catalog.Add("c");

        Use(cache, a);
        Use(cache, b);
        Use(cache, a); // b is now the least recently used
        Use(cache, c);

        Assert.Equal(ResidencyTier.Device, Tier(cache, "a"));
        Assert.Equal(ResidencyTier.Host, Tier(cache, "b"));
        Assert.Equal(ResidencyTier.Device, Tier(cache, "c"));
        Assert.Equal(2, cache.Snapshot().DeviceAdapters);
        Assert.Equal(1, cache.Metrics.Evictions.Value);
    }

    [Fact]
    public void Device_tier_evicts_the_least_recently_used_adapter_when_the_bytes_are_reached()
    {
        var catalog = new Catalog();
        using var cache = NewCache(catalog, new ResidencyOptions { MaxDeviceAdapters = 32, MaxDeviceBytes = AdapterBytes * 5 / 2 });
        var a = catalog.Add("a");
        var b = catalog.Add("b");
        var c = catalog.Add("c");

        Use(cache, b);
        Use(cache, a);
        Use(cache, b); // a is now the least recently used
        Use(cache, c);

        Assert.Equal(AdapterBytes, cache.Status("c").ResidentBytes);
        Assert.Equal(ResidencyTier.Host, Tier(cache, "a"));
        Assert.Equal(ResidencyTier.Device, Tier(cache, "b"));
        Assert.Equal(ResidencyTier.Device, Tier(cache, "c"));
        Assert.Equal(2 * AdapterBytes, cache.Snapshot().DeviceBytes);
        Assert.Equal(2 * AdapterBytes, cache.Metrics.ResidentBytes.WithLabels("device").Value);
    }

    [Fact]
    public void Pinned_adapter_is_never_evicted()
    {
        var catalog = new Catalog();
        using var cache = NewCache(catalog, new ResidencyOptions { MaxDeviceAdapters = 2 });
        var pinned = catalog.Add("pinned");
        var records = Enumerable.Range(0, 4).Select(i => catalog.Add($"other-{i}")).ToList();
        cache.SetPinned("pinned", true);

        Use(cache, pinned);
        foreach (var r in records) Use(cache, r); // "pinned" is the least recently used from now on

        Assert.Equal(ResidencyTier.Device, Tier(cache, "pinned"));
        Assert.True(cache.Status("pinned").Pinned);
        Assert.Equal(ResidencyTier.Device, Tier(cache, "other-3"));
        Assert.Equal(3, cache.Metrics.Evictions.Value);
    }

    [Fact]
    public void Adapter_in_use_is_never_evicted_and_a_full_device_waits_for_a_release()
    {
        var catalog = new Catalog();
        using var cache = NewCache(catalog, new ResidencyOptions { MaxDeviceAdapters = 2 });
        var a = catalog.Add("a");
        var b = catalog.Add("b");
        var c = catalog.Add("c");
        var d = catalog.Add("d");

        var running = cache.Acquire(a);
        var onDevice = Ready(cache, running); // "a" is running and is the least recently used from now on
        Use(cache, b);
        Use(cache, c);
        Assert.Equal(ResidencyTier.Device, Tier(cache, "a"));
        Assert.Equal(ResidencyTier.Host, Tier(cache, "b"));
        Assert.False(onDevice.IsDisposed);

        var alsoRunning = cache.Acquire(c);
        Ready(cache, alsoRunning);
        var waiting = cache.Acquire(d);
        WaitLoaded(waiting);
        Assert.False(cache.TryGetReady(waiting, out _)); // both device slots are leased

        cache.Release(alsoRunning);
        Assert.True(cache.TryGetReady(waiting, out var dAdapter));
        Assert.Equal("d", dAdapter.Name);
        Assert.Equal(ResidencyTier.Device, Tier(cache, "a"));
        Assert.Equal(ResidencyTier.Host, Tier(cache, "c"));
        cache.Release(waiting);
        cache.Release(running);
    }

    [Fact]
    public void Lease_on_v1_keeps_v1_after_v2_is_acquired()
    {
        var catalog = new Catalog();
        using var cache = NewCache(catalog, new ResidencyOptions());
        var v1 = catalog.Add("story", version: 1, seed: 1);
        var v2 = catalog.Add("story", version: 2, seed: 2);

        var old = cache.Acquire(v1);
        var oldAdapter = Ready(cache, old);
        var fresh = cache.Acquire(v2); // the name was replaced: new requests get v2
        var freshAdapter = Ready(cache, fresh);

        Assert.True(cache.TryGetReady(old, out var stillOld));
        Assert.Same(oldAdapter, stillOld);
        Assert.Equal(1, stillOld.Version);
        Assert.Equal(2, freshAdapter.Version);
        // The weights really are each version's own (scaling 2 folded into B).
        Assert.True(stillOld.Module(0, Projection.Q)!.A.allclose(catalog.Get("story", 1).A(0, Projection.Q)));
        Assert.True(freshAdapter.Module(0, Projection.Q)!.A.allclose(catalog.Get("story", 2).A(0, Projection.Q)));
        Assert.Equal(2, cache.ActiveSequences("story"));

        cache.Forget("story"); // both versions are in use: nothing goes
        Assert.False(oldAdapter.IsDisposed);
        cache.Release(old);
        cache.Forget("story"); // v1 is unused now and goes; v2 is still running
        Assert.True(oldAdapter.IsDisposed);
        Assert.False(freshAdapter.IsDisposed);
        Assert.True(cache.TryGetReady(fresh, out var stillFresh));
        Assert.Same(freshAdapter, stillFresh);
        cache.Release(fresh);
    }

    [Fact]
    public void Not_ready_while_the_background_load_runs()
    {
        var catalog = new Catalog();
        using var cache = NewCache(catalog, new ResidencyOptions());
        var a = catalog.Add("slow");
        catalog.Gate.Reset();

        var lease = cache.Acquire(a);
        Assert.False(cache.TryGetReady(lease, out _));
        Assert.False(lease.HostLoaded.IsCompleted);

        catalog.Gate.Set();
        Assert.Equal("slow", Ready(cache, lease).Name);
        cache.Release(lease);
    }

    [Fact]
    public void Failed_load_surfaces_as_a_validation_error_and_counts_as_error()
    {
        var model = new TestBase();
        var metrics = new AdapterResidencyMetrics(Metrics.WithCustomRegistry(Metrics.NewCustomRegistry()));
        using var cache = new AdapterResidencyCache(new ResidencyOptions(), model, CPU, ScalarType.Float32, metrics: metrics);
        var missing = new TestAdapter("vanished") { Directory = Path.Combine(Path.GetTempPath(), "adapterserve-missing-" + Guid.NewGuid()) }
            .Module(0, Projection.Q, 4, 1.0).Record();

        var lease = cache.Acquire(missing);
        WaitLoaded(lease);
        var e = Assert.Throws<AdapterValidationException>(() => cache.TryGetReady(lease, out _));
        Assert.Contains("vanished", e.Message);
        Assert.Equal(1, metrics.Loads.WithLabels("error").Value);
        Assert.Equal(0, metrics.Loads.WithLabels("ok").Value);
        cache.Release(lease);

        // The failure is not cached for ever: the next request tries again.
        var retry = cache.Acquire(missing);
        WaitLoaded(retry);
        Assert.Throws<AdapterValidationException>(() => cache.TryGetReady(retry, out _));
        Assert.Equal(2, metrics.Loads.WithLabels("error").Value);
        cache.Release(retry);
        Assert.Equal(0, cache.Snapshot().TrackedVersions);
    }

    [Fact]
    public void Production_loader_serves_a_peft_directory_from_the_device_tier()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var dir = Directory.CreateTempSubdirectory("adapterserve-residency-");
        try
        {
            var lora = new TestAdapter("disk").Module(1, Projection.V, rank: 4, scaling: 2.0);
            lora.WriteDirectory(dir.FullName, r: 4, alpha: 8);
            var metrics = new AdapterResidencyMetrics(Metrics.WithCustomRegistry(Metrics.NewCustomRegistry()));
            using var cache = new AdapterResidencyCache(new ResidencyOptions(), model, CPU, ScalarType.Float32, metrics: metrics);

            var lease = cache.Acquire(lora.Record());
            var adapter = Ready(cache, lease);
            using var batch = new AdapterBatch([AdapterSegment.Single(0, 3, adapter)]);
            var w0 = model.Weight(1, Projection.V);
            var x = model.Input(Projection.V, 3);
            var expected = Reference.Linear(x, Reference.MergedLora(w0, lora.A(1, Projection.V), lora.B(1, Projection.V), 2.0));
            Reference.AssertClose(expected, batch.Apply(1, Projection.V, x, Reference.Linear(x, w0), w0));

            Assert.Equal(1, metrics.Loads.WithLabels("ok").Value);
            Assert.Equal(1, metrics.LoadSeconds.Count);
            Assert.Equal(1, metrics.Resident.WithLabels("device").Value);
            Assert.Equal(1, cache.Status("disk").LoadCount);
            cache.Release(lease);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task Waiting_until_unused_completes_when_the_last_lease_is_released()
    {
        var catalog = new Catalog();
        using var cache = NewCache(catalog, new ResidencyOptions());
        var a = catalog.Add("busy");
        var first = cache.Acquire(a);
        var second = cache.Acquire(a);

        var unused = cache.WaitUntilUnusedAsync("busy", TestContext.Current.CancellationToken);
        cache.Release(first);
        cache.Release(first); // releasing twice counts once
        Assert.False(unused.IsCompleted);
        Assert.Equal(1, cache.ActiveSequences("busy"));

        cache.Release(second);
        await unused.WaitAsync(LoadTimeout, TestContext.Current.CancellationToken);
        Assert.Equal(0, cache.ActiveSequences("busy"));
    }

    [Fact]
    public void Memory_stays_bounded_over_many_acquire_release_cycles()
    {
        var options = new ResidencyOptions { MaxDeviceAdapters = 3, MaxHostAdapters = 5, MaxHostBytes = AdapterBytes * 4 };
        var catalog = new Catalog();
        using var cache = NewCache(catalog, options);
        var records = Enumerable.Range(0, 20).Select(i => catalog.Add($"adapter-{i}")).ToList();
        var random = new Random(42);

        for (int cycle = 0; cycle < 200; cycle++)
        {
            // Two concurrent requests on random adapters, like two sequences of one batch.
            var first = cache.Acquire(records[random.Next(records.Count)]);
            var second = cache.Acquire(records[random.Next(records.Count)]);
            Ready(cache, first);
            Ready(cache, second);
            cache.Release(first);
            cache.Release(second);

            var s = cache.Snapshot();
            Assert.True(s.DeviceAdapters <= options.MaxDeviceAdapters, $"cycle {cycle}: {s}");
            Assert.True(s.HostAdapters <= options.MaxHostAdapters && s.HostBytes <= options.MaxHostBytes, $"cycle {cycle}: {s}");
            Assert.True(s.TrackedVersions <= options.MaxDeviceAdapters + options.MaxHostAdapters, $"cycle {cycle}: {s}");
        }

        // Every adapter the cache ever loaded and no longer holds has been disposed (tensors freed).
        var end = cache.Snapshot();
        int alive = catalog.Produced.Count(p => !p.IsDisposed);
        Assert.True(alive <= end.DeviceAdapters + end.HostAdapters, $"{alive} live adapters, {end}");
        Assert.True(catalog.Produced.Count > records.Count, "evicted adapters were reloaded from storage");
        Assert.Equal(catalog.Produced.Count, cache.Metrics.Loads.WithLabels("ok").Value);
    }
}
