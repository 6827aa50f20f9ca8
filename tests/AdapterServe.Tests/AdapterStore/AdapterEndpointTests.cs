using System.Formats.Tar;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Metadata;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.AdapterStore;

public class AdapterEndpointTests : IDisposable
{
    private readonly TempFolder _temp = new();
    public void Dispose() => _temp.Dispose();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<JsonNode> Json(HttpResponseMessage response, HttpStatusCode expected)
    {
        string body = await response.Content.ReadAsStringAsync(Ct);
        Assert.True(expected == response.StatusCode, $"expected {(int)expected}, got {(int)response.StatusCode}: {body}");
        return JsonNode.Parse(body)!;
    }

    [Fact]
    public async Task Zip_upload_with_a_top_folder_is_listed_described_pinned_and_deleted()
    {
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"));
        var adapter = TestAdapter.Lora(r: 4, alpha: 8, projections: [Projection.Q, Projection.Down]);
        byte[] zip = TestArchives.Zip([.. adapter.Files().Select(f => ("my-adapter/" + f.Name, f.Bytes)), ("my-adapter/README.md", "hello"u8.ToArray())]);

        using var created = await host.UploadAsync("story.v1", [("file", "my-adapter.zip", zip)]);
        var info = await Json(created, HttpStatusCode.Created);
        Assert.Equal("/v1/adapters/story.v1", created.Headers.Location?.OriginalString);
        Assert.Equal("story.v1", (string?)info["name"]);
        Assert.Equal("lora", (string?)info["kind"]);
        Assert.Equal(4, (int?)info["rank"]);
        Assert.Equal(1, (int?)info["version"]);
        Assert.Equal("stored", (string?)info["status"]);
        Assert.Equal(["q_proj", "down_proj"], info["target_modules"]!.AsArray().Select(x => (string)x!));
        // q: A [4,8] + B [8,4]; down: A [4,12] + B [8,4]; two layers; float32.
        Assert.Equal((32 + 32 + 48 + 32) * 2 * 4, (long?)info["bytes"]);
        Assert.Equal(4, info["modules"]!.AsArray().Count);
        Assert.Equal(2.0, (double?)info["modules"]![0]!["scaling"]);

        var list = await Json(await host.SendAsync(HttpMethod.Get, "/v1/adapters", key: null), HttpStatusCode.OK);
        Assert.Equal("list", (string?)list["object"]);
        Assert.Equal(((string?)info["content_hash"])!, (string?)list["data"]![0]!["content_hash"]);
        Assert.Null(list["data"]![0]!["modules"]);

        var pinned = await Json(await host.SendAsync(HttpMethod.Post, "/v1/adapters/story.v1/pin"), HttpStatusCode.OK);
        Assert.True((bool?)pinned["pinned"]);
        var one = await Json(await host.SendAsync(HttpMethod.Get, "/v1/adapters/story.v1", key: AdapterApiHost.UserKey), HttpStatusCode.OK);
        Assert.True((bool?)one["pinned"]);
        Assert.False((bool?)(await Json(await host.SendAsync(HttpMethod.Post, "/v1/adapters/story.v1/unpin"), HttpStatusCode.OK))["pinned"]);

        var deleted = await Json(await host.SendAsync(HttpMethod.Delete, "/v1/adapters/story.v1"), HttpStatusCode.OK);
        Assert.True((bool?)deleted["deleted"]);
        var gone = await Json(await host.SendAsync(HttpMethod.Get, "/v1/adapters/story.v1", key: null), HttpStatusCode.NotFound);
        Assert.Equal("adapter_not_found", (string?)gone["error"]!["code"]);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(host.DataDirectory, "adapters")));
    }

    [Fact]
    public async Task Tar_gz_upload_and_loose_file_upload_store_the_same_bytes()
    {
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"));
        var adapter = TestAdapter.Lora(seed: 7);
        byte[] tgz = TestArchives.TarGz([
            new PaxTarEntry(TarEntryType.Directory, "./"),
            .. adapter.Files().Select(f => TestArchives.File("./" + f.Name, f.Bytes))]);

        var fromTar = await Json(await host.UploadAsync("from-tar", [("file", "a.tar.gz", tgz)]), HttpStatusCode.Created);
        var fromFiles = await Json(await host.UploadAsync("from-files", adapter), HttpStatusCode.Created);

        Assert.Equal((string?)fromTar["content_hash"], (string?)fromFiles["content_hash"]);
        Assert.Equal("upload:archive", (string?)fromTar["source"]);
        Assert.Equal("upload:files", (string?)fromFiles["source"]);
        Assert.Equal(adapter.SafetensorsBytes(), File.ReadAllBytes(Path.Combine(host.DataDirectory, "adapters", "from-tar", "v1", "adapter_model.safetensors")));
    }

    [Fact]
    public async Task Upload_with_replace_stores_version_2_and_new_lookups_get_it()
    {
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"));
        var v1 = await Json(await host.UploadAsync("hot", TestAdapter.Lora(seed: 1)), HttpStatusCode.Created);
        var registry = host.Services.GetRequiredService<AdapterRegistry>();
        Assert.True(registry.TryResolve("hot", out var running));
        host.Residency.SetActive("hot", 1);

        var v2 = await Json(await host.UploadAsync("hot", TestAdapter.Lora(seed: 2), "?replace=true"), HttpStatusCode.OK);

        Assert.Equal(2, (int?)v2["version"]);
        Assert.NotEqual((string?)v1["content_hash"], (string?)v2["content_hash"]);
        Assert.True(registry.TryResolve("hot", out var fresh));
        Assert.Equal((2, 1), (fresh.Version, running.Version));
        Assert.True(File.Exists(Path.Combine(running.Directory, "adapter_model.safetensors")));
        Assert.Equal(2, (int?)(await Json(await host.SendAsync(HttpMethod.Get, "/v1/adapters/hot", key: null), HttpStatusCode.OK))["version"]);
    }

    [Fact]
    public async Task Delete_in_use_is_409_and_with_wait_completes_once_the_sequences_finish()
    {
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"));
        await Json(await host.UploadAsync("busy", TestAdapter.Lora()), HttpStatusCode.Created);
        host.Residency.SetActive("busy", 1);

        var conflict = await Json(await host.SendAsync(HttpMethod.Delete, "/v1/adapters/busy"), HttpStatusCode.Conflict);
        Assert.Equal("adapter_in_use", (string?)conflict["error"]!["code"]);

        var waiting = host.SendAsync(HttpMethod.Delete, "/v1/adapters/busy?wait=true");
        while (host.Services.GetRequiredService<AdapterRegistry>().TryResolve("busy", out _)) await Task.Delay(5, Ct);
        Assert.False(waiting.IsCompleted);
        host.Residency.SetActive("busy", 0);
        Assert.True((bool?)(await Json(await waiting, HttpStatusCode.OK))["deleted"]);
    }

    [Fact]
    public async Task Vllm_load_and_unload_lora_adapter_copy_from_a_server_path()
    {
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"));
        string path = TestAdapter.Lora(seed: 1).WriteTo(_temp.Sub("on-disk"));

        using var loaded = await host.SendAsync(HttpMethod.Post, "/v1/load_lora_adapter",
            new StringContent(new JsonObject { ["lora_name"] = "disk", ["lora_path"] = path }.ToJsonString(), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, loaded.StatusCode);
        Assert.Equal("Success: LoRA adapter 'disk' added successfully.", await loaded.Content.ReadAsStringAsync(Ct));

        TestAdapter.Lora(seed: 2).WriteTo(path);
        using var inplace = await host.SendAsync(HttpMethod.Post, "/v1/load_lora_adapter",
            new StringContent(new JsonObject { ["lora_name"] = "disk", ["lora_path"] = path, ["load_inplace"] = true }.ToJsonString(), Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, inplace.StatusCode);
        Assert.Equal(2, (int?)(await Json(await host.SendAsync(HttpMethod.Get, "/v1/adapters/disk", key: null), HttpStatusCode.OK))["version"]);

        using var unloaded = await host.SendAsync(HttpMethod.Post, "/v1/unload_lora_adapter",
            new StringContent("""{"lora_name":"disk"}""", Encoding.UTF8, "application/json"));
        Assert.Equal("Success: LoRA adapter 'disk' removed successfully.", await unloaded.Content.ReadAsStringAsync(Ct));
        var again = await Json(await host.SendAsync(HttpMethod.Post, "/v1/unload_lora_adapter",
            new StringContent("""{"lora_name":"disk"}""", Encoding.UTF8, "application/json")), HttpStatusCode.NotFound);
        Assert.Equal("lora_name", (string?)again["error"]!["param"]);
    }

    [Fact]
    public async Task Writes_are_refused_when_no_admin_key_is_configured()
    {
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"), args: []);
        var error = await Json(await host.UploadAsync("x", TestAdapter.Lora()), HttpStatusCode.Forbidden);
        Assert.Contains("--admin-key", (string?)error["error"]!["message"]);
        Assert.Equal(HttpStatusCode.OK, (await host.SendAsync(HttpMethod.Get, "/v1/adapters", key: null)).StatusCode);
    }

    [Fact]
    public async Task Admin_key_flag_on_the_command_line_guards_writes()
    {
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"), args: ["--admin-key", "sk-from-flag"]);
        Assert.Equal(HttpStatusCode.Forbidden, (await host.UploadAsync("x", TestAdapter.Lora())).StatusCode);
        using var accepted = await host.SendAsync(HttpMethod.Post, "/v1/adapters", AdapterApiHost.Form("x", TestAdapter.Lora().Files().Select(f => (f.Name, (string?)f.Name, f.Bytes))), key: "sk-from-flag");
        Assert.Equal(HttpStatusCode.Created, accepted.StatusCode);
    }

    [Fact]
    public async Task Store_opened_by_a_new_host_lists_what_the_old_one_stored()
    {
        string data = _temp.Sub("data");
        await using (var first = await AdapterApiHost.StartAsync(data))
            await Json(await first.UploadAsync("persisted", TestAdapter.Lora()), HttpStatusCode.Created);
        Directory.CreateDirectory(Path.Combine(data, "tmp", "killed-upload"));

        await using var second = await AdapterApiHost.StartAsync(data);
        var list = await Json(await second.SendAsync(HttpMethod.Get, "/v1/adapters", key: null), HttpStatusCode.OK);
        Assert.Equal(["persisted"], list["data"]!.AsArray().Select(a => (string)a!["name"]!));
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(data, "tmp")));
    }

    [Fact]
    public async Task Invalid_options_fail_at_start_naming_the_setting()
    {
        var e = await Assert.ThrowsAnyAsync<Exception>(() => AdapterApiHost.StartAsync(_temp.Sub("data"),
            settings: new Dictionary<string, string?> { ["Adapters:MaxUploadBytes"] = "0" }));
        Assert.Contains("Adapters:MaxUploadBytes", e.Message);
    }

    [Fact]
    public async Task Every_adapter_endpoint_is_documented_with_a_summary()
    {
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"), swagger: true);
        var endpoints = host.Services.GetRequiredService<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>()
            .Where(e => e.Metadata.GetMetadata<IExcludeFromDescriptionMetadata>() is not { ExcludeFromDescription: true })
            .ToList();
        Assert.Equal(9, endpoints.Count);                                   // 8 + GET /v1/adapters/{name}/experts
        Assert.All(endpoints, e => Assert.False(string.IsNullOrWhiteSpace(e.Metadata.GetMetadata<IEndpointSummaryMetadata>()?.Summary), e.DisplayName));

        var document = await Json(await host.SendAsync(HttpMethod.Get, "/swagger/v1/swagger.json", key: null), HttpStatusCode.OK);
        var operations = document["paths"]!.AsObject().SelectMany(p => p.Value!.AsObject().Select(o => (Path: p.Key, Method: o.Key, Operation: o.Value!))).ToList();
        Assert.Equal(9, operations.Count);
        Assert.All(operations, o => Assert.False(string.IsNullOrWhiteSpace((string?)o.Operation["summary"]), $"{o.Method} {o.Path}"));
        var upload = operations.Single(o => o.Path == "/v1/adapters" && o.Method == "post").Operation;
        Assert.NotNull(upload["requestBody"]!["content"]!["multipart/form-data"]);
        // The documented field names are the ones served, whatever the host's global JSON naming.
        var schemas = document["components"]!["schemas"]!;
        Assert.NotNull(schemas["AdapterInfo"]!["properties"]!["content_hash"]);
        Assert.NotNull(schemas["AdapterInfo"]!["properties"]!["target_modules"]);
        Assert.NotNull(schemas["LoadLoraAdapterRequest"]!["properties"]!["load_inplace"]);
        Assert.NotNull(schemas["AdapterUploadForm"]!["properties"]!["adapter_model.safetensors"]);
    }

    [Theory]
    [InlineData("zara")]
    [InlineData("forest")]
    public async Task Real_peft_adapter_uploads_as_a_zip_for_stories260K(string name)
    {
        string models = SharedModels.Require("");
        var baseModel = ModelConfig.Load(Path.Combine(models, "stories260K-hf", "config.json"));
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"), baseModel: baseModel,
            settings: new Dictionary<string, string?> { ["Adapters:MaxUploadBytes"] = (4 << 20).ToString() });
        string dir = Path.Combine(models, "adapters", name);
        byte[] zip = TestArchives.Zip(Directory.GetFiles(dir).Select(f => (name + "/" + Path.GetFileName(f), File.ReadAllBytes(f))));

        var info = await Json(await host.UploadAsync(name, [("file", name + ".zip", zip)]), HttpStatusCode.Created);

        Assert.Equal(8, (int?)info["rank"]);
        Assert.Equal(35, info["modules"]!.AsArray().Count);
        Assert.Equal(7, info["target_modules"]!.AsArray().Count);
    }
}
