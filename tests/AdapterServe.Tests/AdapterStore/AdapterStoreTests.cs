using System.Security.Cryptography;
using System.Text;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;

using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.AdapterStore;

public class AdapterStoreTests : IDisposable
{
    private readonly TempFolder _temp = new();
    private readonly FakeResidency _residency = new();
    private readonly ManualClock _clock = new();

    public void Dispose() => _temp.Dispose();

    private string Data => _temp.Sub("data");

    private global::AdapterServe.Adapters.Store.AdapterStore NewStore(double graceSeconds = 0, ModelConfig? baseModel = null) =>
        new(new AdapterStoreOptions { DataDirectory = Data, RetiredVersionGraceSeconds = graceSeconds },
            baseModel ?? TestAdapter.TinyBase, _residency, new AdapterRegistry(), time: _clock);

    private static async Task<AdapterCommit> Put(global::AdapterServe.Adapters.Store.AdapterStore store, string name, TestAdapter adapter, bool replace = false)
    {
        using var staging = store.BeginStaging();
        adapter.WriteTo(staging.ReceivedDirectory);
        return await store.CommitAsync(name, staging, replace, "test", TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task Store_survives_a_restart_and_lists_the_same_records()
    {
        var first = NewStore();
        await Put(first, "alpha", TestAdapter.Lora(seed: 1));
        _clock.Advance(TimeSpan.FromMinutes(1));
        await Put(first, "beta.v-2_x", TestAdapter.Lora(r: 4, alpha: 16, projections: [Projection.Down], seed: 2));
        await Put(first, "alpha", TestAdapter.Lora(seed: 3), replace: true);

        var second = NewStore();

        Assert.Equal(first.Registry.List().Select(Summary), second.Registry.List().Select(Summary));
        Assert.Equal(["alpha", "beta.v-2_x"], second.Registry.List().Select(r => r.Name));
        Assert.Equal(2, second.Registry.List()[0].Version);
    }

    private static string Summary(AdapterRecord r) =>
        $"{r.Name} v{r.Version} {r.Directory} {r.ContentHash} {r.Source} {r.CreatedAt:O} {r.UpdatedAt:O} {r.Description.Kind} {r.Description.WeightBytes} " +
        string.Join(",", ((LoraDescription)r.Description).Modules.Select(m => $"{m.Layer}/{m.Projection}/{m.Rank}/{m.Scaling}/{m.TensorPrefix}"));

    [Fact]
    public async Task Stored_version_holds_the_peft_files_and_a_manifest_and_its_hash_is_over_sha256sum_lines()
    {
        var store = NewStore();
        var adapter = TestAdapter.Lora();
        var record = (await Put(store, "hashed", adapter)).Record;

        Assert.Equal(Path.Combine(Data, "adapters", "hashed", "v1"), record.Directory);
        Assert.Equal(["adapter_config.json", "adapter_model.safetensors", "manifest.json"],
            Directory.GetFiles(record.Directory).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(adapter.ConfigBytes(), File.ReadAllBytes(Path.Combine(record.Directory, "adapter_config.json")));

        string Sha(string file) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(record.Directory, file))));
        string lines = $"{Sha("adapter_config.json")}  adapter_config.json\n{Sha("adapter_model.safetensors")}  adapter_model.safetensors\n";
        Assert.Equal("sha256:" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(lines))), record.ContentHash);
        Assert.Contains(record.ContentHash, File.ReadAllText(Path.Combine(record.Directory, "manifest.json")));
    }

    [Fact]
    public async Task Replace_creates_v2_and_v1_stays_readable_until_no_sequence_uses_it()
    {
        var store = NewStore();
        var v1 = (await Put(store, "swap", TestAdapter.Lora(seed: 1))).Record;
        Assert.True(store.Registry.TryResolve("swap", out var resolvedBefore));
        _residency.SetActive("swap", 1);

        var commit = await Put(store, "swap", TestAdapter.Lora(seed: 2), replace: true);

        Assert.Same(v1, commit.Replaced);
        Assert.Equal(2, commit.Record.Version);
        Assert.True(store.Registry.TryResolve("swap", out var resolvedAfter));
        Assert.Equal(2, resolvedAfter.Version);
        Assert.NotEqual(v1.ContentHash, resolvedAfter.ContentHash);
        // A request that resolved v1 still finds v1's files, whole.
        Assert.Same(v1, resolvedBefore);
        Assert.Equal(v1.Description.ModuleSummaries.Count, AdapterValidator.Validate(v1.Directory, TestAdapter.TinyBase).ModuleSummaries.Count);
        Assert.Equal(0, store.CollectRetiredVersions());
        Assert.Equal([1, 2], store.VersionsOnDisk("swap"));

        _residency.SetActive("swap", 0);
        Assert.Equal(1, store.CollectRetiredVersions());
        Assert.False(Directory.Exists(v1.Directory));
        Assert.Equal([2], store.VersionsOnDisk("swap"));
        Assert.Contains("swap", _residency.Forgotten);
    }

    [Fact]
    public async Task Replaced_version_is_kept_for_the_grace_period()
    {
        var store = NewStore(graceSeconds: 30);
        var v1 = (await Put(store, "graced", TestAdapter.Lora(seed: 1))).Record;
        await Put(store, "graced", TestAdapter.Lora(seed: 2), replace: true);

        Assert.Equal(0, store.CollectRetiredVersions());
        Assert.True(Directory.Exists(v1.Directory));
        _clock.Advance(TimeSpan.FromSeconds(31));
        Assert.Equal(1, store.CollectRetiredVersions());
        Assert.False(Directory.Exists(v1.Directory));
    }

    [Fact]
    public async Task Existing_name_without_replace_is_409_and_changes_nothing()
    {
        var store = NewStore();
        await Put(store, "taken", TestAdapter.Lora(seed: 1));
        string before = TreeListing.Of(Data);
        var e = await Assert.ThrowsAsync<AdapterStoreException>(() => Put(store, "taken", TestAdapter.Lora(seed: 2)));
        Assert.Equal((409, "adapter_exists"), (e.StatusCode, e.Code));
        Assert.Contains("replace=true", e.Message);
        Assert.Equal(before, TreeListing.Of(Data));
    }

    [Fact]
    public async Task Start_removes_stale_staging_and_uncommitted_versions_and_old_versions()
    {
        var store = NewStore();
        await Put(store, "kept", TestAdapter.Lora(seed: 1));
        _residency.SetActive("kept", 1);
        await Put(store, "kept", TestAdapter.Lora(seed: 2), replace: true);
        // What a crash leaves: a half-written staging folder, a version folder without manifest, an empty name folder.
        Directory.CreateDirectory(Path.Combine(Data, "tmp", "0123", "received"));
        File.WriteAllBytes(Path.Combine(Data, "tmp", "0123", "received", "adapter_model.safetensors"), [1, 2, 3]);
        TestAdapter.Lora().WriteTo(Path.Combine(Data, "adapters", "kept", "v3"));
        TestAdapter.Lora().WriteTo(Path.Combine(Data, "adapters", "ghost", "v1"));
        _residency.SetActive("kept", 0);

        var restarted = NewStore();

        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(Data, "tmp")));
        Assert.Equal(["kept"], restarted.Registry.List().Select(r => r.Name));
        Assert.Equal(2, restarted.Registry.List()[0].Version);
        Assert.Equal([2], restarted.VersionsOnDisk("kept"));
        Assert.False(Directory.Exists(Path.Combine(Data, "adapters", "ghost")));
    }

    [Fact]
    public async Task Stored_adapter_that_no_longer_fits_the_base_is_not_listed_and_not_deleted()
    {
        var store = NewStore();
        var record = (await Put(store, "narrow", TestAdapter.Lora())).Record;
        var wider = TestAdapter.TinyBase with { HiddenSize = 16, HeadDim = 8 };

        var restarted = NewStore(baseModel: wider);

        Assert.Empty(restarted.Registry.List());
        Assert.True(File.Exists(Path.Combine(record.Directory, "adapter_model.safetensors")));
    }

    [Fact]
    public async Task Delete_of_an_adapter_in_use_is_409_and_keeps_it()
    {
        var store = NewStore();
        await Put(store, "busy", TestAdapter.Lora());
        _residency.SetActive("busy", 2);
        string before = TreeListing.Of(Data);

        var e = await Assert.ThrowsAsync<AdapterStoreException>(() => store.DeleteAsync("busy", wait: false, TestContext.Current.CancellationToken));

        Assert.Equal((409, "adapter_in_use"), (e.StatusCode, e.Code));
        Assert.Contains("2 running sequence", e.Message);
        Assert.True(store.Registry.TryResolve("busy", out _));
        Assert.Equal(before, TreeListing.Of(Data));
    }

    [Fact]
    public async Task Delete_with_wait_withdraws_at_once_and_deletes_when_unused()
    {
        var store = NewStore();
        var record = (await Put(store, "draining", TestAdapter.Lora())).Record;
        _residency.SetActive("draining", 1);

        var deletion = store.DeleteAsync("draining", wait: true, TestContext.Current.CancellationToken);

        Assert.False(deletion.IsCompleted);
        Assert.False(store.Registry.TryResolve("draining", out _));
        Assert.True(File.Exists(Path.Combine(record.Directory, "adapter_model.safetensors")));
        _residency.SetActive("draining", 0);
        Assert.Same(record, await deletion);
        Assert.False(Directory.Exists(Path.Combine(Data, "adapters", "draining")));
        Assert.False(NewStore().Registry.TryResolve("draining", out _));
    }

    [Fact]
    public async Task Cancelled_wait_for_delete_restores_the_adapter()
    {
        var store = NewStore();
        var record = (await Put(store, "stays", TestAdapter.Lora())).Record;
        _residency.SetActive("stays", 1);
        using var cancel = new CancellationTokenSource();

        var deletion = store.DeleteAsync("stays", wait: true, cancel.Token);
        await cancel.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => deletion);
        Assert.True(store.Registry.TryResolve("stays", out var again));
        Assert.Same(record, again);
    }

    [Fact]
    public async Task Delete_of_an_unknown_adapter_is_404()
    {
        var e = await Assert.ThrowsAsync<AdapterStoreException>(() => NewStore().DeleteAsync("nobody", wait: false, TestContext.Current.CancellationToken));
        Assert.Equal((404, "adapter_not_found"), (e.StatusCode, e.Code));
    }

    [Fact]
    public async Task Registered_path_is_copied_so_later_changes_to_the_source_cannot_corrupt_the_store()
    {
        var store = NewStore();
        string source = TestAdapter.Lora().WriteTo(_temp.Sub("outside"));
        var record = (await store.RegisterPathAsync("copied", source, replace: false, TestContext.Current.CancellationToken)).Record;

        File.WriteAllBytes(Path.Combine(source, "adapter_model.safetensors"), [0, 1, 2]);

        Assert.Equal("path:" + Path.GetFullPath(source), record.Source);
        Assert.Equal(4, AdapterValidator.Validate(record.Directory, TestAdapter.TinyBase).ModuleSummaries.Count);
        Assert.Equal(record.ContentHash, ContentHash.Compute(record.Directory, ["adapter_config.json", "adapter_model.safetensors"]).Hash);
    }

    [Fact]
    public async Task Registered_path_that_does_not_exist_is_a_400_naming_it()
    {
        var store = NewStore();
        string before = TreeListing.Of(Data);
        var e = await Assert.ThrowsAsync<AdapterValidationException>(() => store.RegisterPathAsync("nowhere", "/no/such/adapter", false, TestContext.Current.CancellationToken));
        Assert.Contains("/no/such/adapter", e.Message);
        Assert.Equal(before, TreeListing.Of(Data));
    }

    [Fact]
    public async Task Real_zara_adapter_is_stored_from_its_path()
    {
        string models = SharedModels.Require("");
        var baseModel = ModelConfig.Load(Path.Combine(models, "stories260K-hf", "config.json"));
        var store = NewStore(baseModel: baseModel);
        string zara = Path.Combine(models, "adapters", "zara");

        var record = (await store.RegisterPathAsync("zara", zara, replace: false, TestContext.Current.CancellationToken)).Record;

        Assert.Equal(35, record.Description.ModuleSummaries.Count);
        Assert.Equal(File.ReadAllBytes(Path.Combine(zara, "adapter_model.safetensors")), File.ReadAllBytes(Path.Combine(record.Directory, "adapter_model.safetensors")));
        Assert.Equal(["zara"], NewStore(baseModel: baseModel).Registry.List().Select(r => r.Name));
    }

    [Theory]
    [InlineData("a", true)]
    [InlineData("Zara-v2_final.1", true)]
    [InlineData("...", true)]
    [InlineData("", false)]
    [InlineData(".", false)]
    [InlineData("..", false)]
    [InlineData("a/b", false)]
    [InlineData("a b", false)]
    [InlineData("zára", false)]
    [InlineData("a\u0000", false)]
    public void Adapter_names_allow_letters_digits_dash_underscore_dot(string name, bool valid)
    {
        Assert.Equal(valid, AdapterName.IsValid(name));
    }

    [Fact]
    public void Adapter_names_are_at_most_128_characters()
    {
        Assert.True(AdapterName.IsValid(new string('a', 128)));
        Assert.Contains("129 characters", AdapterName.Problem(new string('a', 129)));
    }

    private sealed class ManualClock : TimeProvider
    {
        private DateTimeOffset _now = new(2026, 1, 2, 3, 4, 5, TimeSpan.Zero);
        public void Advance(TimeSpan by) => _now += by;
        public override DateTimeOffset GetUtcNow() => _now;
    }
}

public class AdapterRegistryTests
{
    private static AdapterRecord Record(string name, int version) =>
        new(name, version, "/x", new LoraDescription(AdapterKind.Lora, [], false, "peft", 0), "sha256:0", "test",
            DateTimeOffset.UnixEpoch, DateTimeOffset.UnixEpoch);

    [Fact]
    public void A_resolved_record_stays_what_it_was_after_the_name_is_replaced_or_removed()
    {
        var registry = new AdapterRegistry();
        var v1 = Record("a", 1);
        registry.Publish(v1);
        Assert.True(registry.TryResolve("a", out var held));
        var listed = registry.List();

        registry.Publish(Record("a", 2));
        registry.Remove("a");

        Assert.Same(v1, held);
        Assert.Equal([v1], listed);
        Assert.False(registry.TryResolve("a", out _));
    }

    [Fact]
    public void Changes_are_reported_with_previous_and_current_records()
    {
        var registry = new AdapterRegistry();
        var changes = new List<AdapterRegistryChange>();
        registry.Changed += changes.Add;
        var a1 = Record("a", 1);
        var a2 = Record("a", 2);

        registry.Publish(a1);
        registry.Publish(a2);
        registry.Remove("a");
        registry.Remove("a");

        Assert.Equal([new("a", null, a1), new("a", a1, a2), new("a", a2, null)], changes);
    }

    [Fact]
    public void List_is_ordered_by_name_and_remove_with_expected_record_only_removes_that_record()
    {
        var registry = new AdapterRegistry();
        var b = Record("b", 1);
        registry.Publish(b);
        registry.Publish(Record("a", 1));
        Assert.Equal(["a", "b"], registry.List().Select(r => r.Name));

        Assert.False(registry.Remove("b", Record("b", 1)));
        Assert.True(registry.Remove("b", b));
        Assert.False(registry.PublishIfAbsent(Record("a", 7)));
        Assert.Equal(1, registry.List().Single().Version);
    }

    [Fact]
    public async Task Concurrent_publishers_lose_no_update()
    {
        var registry = new AdapterRegistry();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(t => Task.Run(() =>
        {
            for (int i = 0; i < 50; i++) registry.Publish(Record($"t{t}-{i}", 1));
        })));
        Assert.Equal(400, registry.Count);
    }
}
