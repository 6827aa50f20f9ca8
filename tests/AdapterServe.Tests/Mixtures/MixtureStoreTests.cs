using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Bench.Adapters;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.Mixtures;

/// <summary>A mixer's referenced experts in the store: restart order, replacement and deletion.</summary>
public sealed class MixtureStoreTests : IDisposable
{
    private readonly TempFolder _temp = new();
    private readonly FakeResidency _residency = new();
    static readonly Projection[] Targets = [Projection.Q, Projection.V];

    public void Dispose() => _temp.Dispose();

    private AdapterServe.Adapters.Store.AdapterStore NewStore() =>
        new(new AdapterStoreOptions { DataDirectory = _temp.Sub("data"), RetiredVersionGraceSeconds = 0 }, TestAdapter.TinyBase, _residency, new AdapterRegistry());

    private static async Task<AdapterCommit> Put(AdapterServe.Adapters.Store.AdapterStore store, string name, TestAdapter adapter, bool replace = false)
    {
        using var staging = store.BeginStaging();
        adapter.WriteTo(staging.ReceivedDirectory);
        return await store.CommitAsync(name, staging, replace, "test", TestContext.Current.CancellationToken);
    }

    private Task<AdapterCommit> PutMixer(AdapterServe.Adapters.Store.AdapterStore store, string name, string[] experts)
    {
        string dir = _temp.Sub("src-" + name);
        MixtureWriters.WriteLoraMixer(dir, TestAdapter.TinyBase, experts.Length, topK: 1, rank: 2, Targets, seed: 3, expertNames: experts);
        return store.RegisterPathAsync(name, dir, replace: false, TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task A_mixer_listed_before_its_experts_opens_after_a_restart_on_their_current_versions()
    {
        var store = NewStore();
        await Put(store, "zz-1", TestAdapter.Lora(projections: Targets, seed: 1));
        await Put(store, "zz-2", TestAdapter.Lora(projections: Targets, seed: 2));
        await PutMixer(store, "mix", ["zz-1", "zz-2"]);

        var reopened = NewStore();

        Assert.Equal(["mix", "zz-1", "zz-2"], reopened.Registry.List().Select(r => r.Name));
        Assert.True(reopened.Registry.TryResolve("mix", out var mix));
        Assert.Equal(["zz-1", "zz-2"], mix.Description.DependsOn);
        foreach (var dependency in mix.Description.Dependencies)
        {
            Assert.True(reopened.Registry.TryResolve(dependency.Name, out var current));
            Assert.Same(current, dependency);
        }
    }

    [Fact]
    public async Task Replacing_an_expert_revalidates_its_mixers_and_a_replacement_they_cannot_use_is_refused_naming_them()
    {
        var store = NewStore();
        await Put(store, "zz-1", TestAdapter.Lora(projections: Targets, seed: 1));
        await Put(store, "zz-2", TestAdapter.Lora(projections: Targets, seed: 2));
        await PutMixer(store, "mix", ["zz-1", "zz-2"]);
        await PutMixer(store, "mono", ["zz-1"]);

        // A LoRA on down_proj only leaves mono's q/v routers without any expert: refused, nothing changes.
        var e = await Assert.ThrowsAsync<AdapterStoreException>(() => Put(store, "zz-1", TestAdapter.Lora(projections: [Projection.Down], seed: 9), replace: true));
        Assert.Equal(409, e.StatusCode);
        Assert.Equal("adapter_referenced", e.Code);
        Assert.Contains("'mono'", e.Message);
        Assert.True(store.Registry.TryResolve("zz-1", out var kept));
        Assert.Equal(1, kept.Version);
        Assert.Equal([1], store.VersionsOnDisk("zz-1"));

        // A fitting replacement: both mixers now use version 2 (same mixer versions).
        var v2 = (await Put(store, "zz-1", TestAdapter.Lora(projections: Targets, seed: 5), replace: true)).Record;
        foreach (var name in new[] { "mix", "mono" })
        {
            Assert.True(store.Registry.TryResolve(name, out var mixer));
            Assert.Equal(1, mixer.Version);
            Assert.Same(v2, mixer.Description.Dependencies.Single(d => d.Name == "zz-1"));
        }

        // Deleting a referenced expert: 409 naming both mixers; after they go, it can go.
        var refused = await Assert.ThrowsAsync<AdapterStoreException>(() => store.DeleteAsync("zz-1", wait: false, TestContext.Current.CancellationToken));
        Assert.Equal(409, refused.StatusCode);
        Assert.Contains("'mix'", refused.Message);
        Assert.Contains("'mono'", refused.Message);
        await store.DeleteAsync("mix", wait: false, TestContext.Current.CancellationToken);
        await store.DeleteAsync("mono", wait: false, TestContext.Current.CancellationToken);
        await store.DeleteAsync("zz-1", wait: false, TestContext.Current.CancellationToken);
        Assert.False(store.Registry.TryResolve("zz-1", out _));
    }
}
