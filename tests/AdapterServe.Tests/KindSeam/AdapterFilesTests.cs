using System.Net;
using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using AdapterServe.Server.Adapters;
using AdapterServe.Tests.AdapterStore;
using Store = AdapterServe.Adapters.Store.AdapterStore;

namespace AdapterServe.Tests.KindSeam;

/// <summary>Each kind declares its files, nested folders included; upload, staging, store and archive place exactly those.</summary>
public sealed class AdapterFilesTests : IDisposable
{
    private static readonly ModelConfig Base = TestAdapter.TinyBase;   // q_proj and o_proj are square [8 → 8]
    private static readonly AdapterKinds WithGains = AdapterKinds.BuiltIn.With(new ScaledIdentityKind());
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private Store NewStore(AdapterKinds kinds) =>
        new(new AdapterStoreOptions { DataDirectory = _temp.Sub("data") }, Base, new FakeResidency(), new AdapterRegistry(), kinds: kinds);

    private static Dictionary<(int Layer, Projection Projection), float[]> Gains() => new()
    {
        [(0, Projection.Q)] = [.. Enumerable.Range(0, 8).Select(i => 0.1f * i)],
        [(1, Projection.O)] = [.. Enumerable.Range(0, 8).Select(i => -0.1f * i)],
    };

    /// <summary>The files of an adapter folder (relative, '/'-separated) with their bytes, as an upload would carry them.</summary>
    private static List<(string Name, byte[] Bytes)> FilesOf(string directory) =>
        [.. Directory.EnumerateFiles(directory, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .Select(f => (Path.GetRelativePath(directory, f).Replace(Path.DirectorySeparatorChar, '/'), File.ReadAllBytes(f)))];

    private static async Task<AdapterCommit> UploadArchive(Store store, string name, byte[] zip)
    {
        using var staging = store.BeginStaging();
        string archive = staging.NewUploadPath();
        await File.WriteAllBytesAsync(archive, zip, TestContext.Current.CancellationToken);
        staging.UseArchive(archive, store.ArchiveLimits);
        return await store.CommitAsync(name, staging, replace: false, "test", TestContext.Current.CancellationToken);
    }

    [Fact]
    public void A_star_segment_matches_one_folder_name_and_nothing_deeper()
    {
        var files = new AdapterFiles([new("adapter_config.json"), new("experts/*/adapter_model.safetensors", Required: false)]);
        Assert.True(files.Places("adapter_config.json"));
        Assert.True(files.Places("experts/math-1/adapter_model.safetensors"));
        Assert.False(files.Places("experts/adapter_model.safetensors"));
        Assert.False(files.Places("experts/a/b/adapter_model.safetensors"));
        Assert.False(files.Places("experts/../adapter_model.safetensors"));
        Assert.False(files.Places("experts/a/adapter_config.json"));
        Assert.False(files.Places("README.md"));
    }

    [Fact]
    public void Find_lists_the_declared_files_in_their_folders_only()
    {
        string dir = _temp.Sub("layout");
        Directory.CreateDirectory(Path.Combine(dir, "experts", "a"));
        Directory.CreateDirectory(Path.Combine(dir, "experts", "b", "deeper"));
        Directory.CreateDirectory(Path.Combine(dir, "other", "a"));
        foreach (var f in new[] { "adapter_config.json", "README.md", "experts/a/adapter_model.safetensors", "experts/b/deeper/adapter_model.safetensors",
                     "experts/b/notes.txt", "other/a/adapter_model.safetensors" })
            File.WriteAllText(Path.Combine(dir, f), "x");
        var files = new AdapterFiles([new("adapter_config.json"), new("experts/*/adapter_model.safetensors", Required: false)]);
        Assert.Equal(["adapter_config.json", "experts/a/adapter_model.safetensors"], files.Find(dir));
    }

    [Fact]
    public async Task An_archive_with_nested_kind_files_is_stored_with_them_and_listed_again_after_a_restart()
    {
        string source = _temp.Sub("gain");
        ScaledIdentityKind.Write(source, Gains());
        byte[] zip = TestArchives.Zip([.. FilesOf(source).Select(f => ("gain-adapter/" + f.Name, f.Bytes)), ("gain-adapter/README.md", "hello"u8.ToArray())]);

        var record = (await UploadArchive(NewStore(WithGains), "gain", zip)).Record;

        Assert.Equal(ScaledIdentityKind.Name, record.Description.Kind);
        Assert.Equal(["adapter_config.json", "gains/layer0/gain.safetensors", "gains/layer1/gain.safetensors", "manifest.json"],
            FilesOf(record.Directory).Select(f => f.Name));
        Assert.Equal(["adapter_config.json", "gains/layer0/gain.safetensors", "gains/layer1/gain.safetensors"],
            AdapterManifest.Read(record.Directory).Files.Select(f => f.Name));
        Assert.Equal(File.ReadAllBytes(Path.Combine(source, ScaledIdentityKind.GainPath(1))), File.ReadAllBytes(Path.Combine(record.Directory, ScaledIdentityKind.GainPath(1))));

        var reopened = NewStore(WithGains);
        Assert.True(reopened.Registry.TryResolve("gain", out var listed));
        Assert.Equal(record.ContentHash, listed.ContentHash);
        Assert.Equal(record.Description.ModuleSummaries.Count, listed.Description.ModuleSummaries.Count);
    }

    [Fact]
    public async Task An_archive_entry_no_kind_can_place_is_refused_not_dropped()
    {
        string source = _temp.Sub("gain");
        ScaledIdentityKind.Write(source, Gains());
        byte[] zip = TestArchives.Zip([.. FilesOf(source).Select(f => ("gain-adapter/" + f.Name, f.Bytes))]);

        var e = await Assert.ThrowsAsync<AdapterValidationException>(() => UploadArchive(NewStore(AdapterKinds.BuiltIn), "gain", zip));

        Assert.Equal("archive_unplaced_entry", e.Code);
        Assert.Contains("gain-adapter/gains/layer0/gain.safetensors", e.Message);
        Assert.Equal(400, e.StatusCode);
    }

    [Fact]
    public async Task A_file_of_another_kind_inside_an_adapter_is_refused_when_the_kind_is_known()
    {
        string gains = _temp.Sub("gain");
        ScaledIdentityKind.Write(gains, Gains());
        var lora = TestAdapter.Lora(seed: 4);
        byte[] zip = TestArchives.Zip([.. lora.Files(), .. FilesOf(gains).Where(f => f.Name.StartsWith("gains/", StringComparison.Ordinal))]);

        var e = await Assert.ThrowsAsync<AdapterValidationException>(() => UploadArchive(NewStore(WithGains), "mixed-up", zip));

        Assert.Equal("unexpected_adapter_file", e.Code);
        Assert.Contains("'gains/layer0/gain.safetensors' is not a file of a lora adapter", e.Message);
    }

    [Fact]
    public async Task A_kind_added_to_the_server_is_uploaded_over_http_and_rendered_by_the_api()
    {
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("http"), services: s => s.AddAdapterKind<ScaledIdentityKind>());
        string source = _temp.Sub("gain");
        ScaledIdentityKind.Write(source, Gains());
        byte[] zip = TestArchives.Zip([.. FilesOf(source).Select(f => ("gain-adapter/" + f.Name, f.Bytes))]);

        using var created = await host.UploadAsync("gain", [("file", "gain.zip", zip)]);
        string body = await created.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        Assert.True(created.StatusCode == HttpStatusCode.Created, body);

        using var shown = await host.SendAsync(HttpMethod.Get, "/v1/adapters/gain", key: null);
        var info = JsonNode.Parse(await shown.Content.ReadAsStringAsync(TestContext.Current.CancellationToken))!;
        Assert.Equal("scaled_identity", (string?)info["kind"]);
        Assert.Equal(["q_proj", "o_proj"], info["target_modules"]!.AsArray().Select(x => (string)x!));
        Assert.Equal(2 * 8 * 4, (long?)info["bytes"]);
        Assert.Equal(["gains/layer0/gain.safetensors", "gains/layer1/gain.safetensors"],
            info["modules"]!.AsArray().Select(m => (string)m!["gain_file"]!));
    }
}
