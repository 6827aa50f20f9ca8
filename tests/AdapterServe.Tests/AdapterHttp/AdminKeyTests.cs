using System.Text;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Server;

namespace AdapterServe.Tests.AdapterHttp;

/// <summary>The admin key guards adapter writes; ordinary API keys use adapters, through the whole server.</summary>
[Collection(AdapterHttpCollection.Name)]
public sealed class AdminKeyTests(ReferenceServer reference)
{
    private static readonly GreedyRequest Story = new("keyed", "Once upon a time", 8);

    [Fact]
    public async Task Ordinary_keys_cannot_change_adapters_but_can_use_them()
    {
        var adapter = TinyAdapters.Lora(seed: 701);
        await using var server = await AdapterServer.StartAsync(userKeys: true);
        using var folder = new TempDir();
        string path = TinyAdapters.Folder(adapter, folder, "keyed");

        // Writes with the ordinary key: 403; with no key or a wrong one: 401. All OpenAI-shaped; nothing stored.
        foreach (var (key, expected) in new (string?, int)[] { (AdapterServer.UserKey, 403), (null, 401), ("sk-wrong", 401) })
        {
            var (status, body) = await server.UploadAsync("keyed", adapter, key: key);
            Assert.True(status == expected, $"upload with key {key ?? "(none)"}: {status} {body?.ToJsonString()}");
            var error = Http.Error(body);
            Assert.Equal(status == 401 ? "invalid_request_error" : "permission_error", (string?)error["type"]);

            var (loadStatus, loadText) = await server.LoadLoraAdapterAsync("keyed", path, inplace: false, key: key);
            Assert.True(loadStatus == expected, $"load_lora_adapter with key {key ?? "(none)"}: {loadStatus} {loadText}");
            Http.Error(System.Text.Json.Nodes.JsonNode.Parse(loadText));
        }
        Assert.Equal(404, (await server.GetAsync("/v1/adapters/keyed", AdapterServer.UserKey)).Status);
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(server.DataDirectory, "adapters")));

        // The admin key stores it; the ordinary key lists it and generates with it.
        await server.UploadOkAsync("keyed", adapter);
        var (listed, list) = await server.GetAsync("/v1/adapters", AdapterServer.UserKey);
        Assert.Equal(200, listed);
        Assert.Equal("keyed", (string?)Assert.Single(list!["data"]!.AsArray())!["name"]);
        (await server.CompleteAsync(Story, key: AdapterServer.UserKey)).AssertSameAs(await reference.AloneAsync("keyed", adapter, Story), "the adapter used with the ordinary key");
        var (models, body2) = await server.GetAsync("/v1/models", AdapterServer.UserKey);
        Assert.Equal(200, models);
        Assert.Contains("keyed", body2!["data"]!.AsArray().Select(c => (string?)c!["id"]));

        // Delete, pin and replace stay admin-only.
        Assert.Equal(403, (await server.DeleteAsync("keyed", key: AdapterServer.UserKey)).Status);
        Assert.Equal(403, (await server.SendAdminAsync(HttpMethod.Post, "/v1/adapters/keyed/pin", AdapterServer.UserKey)).Status);
        Assert.Equal(403, (await server.UploadAsync("keyed", TinyAdapters.Lora(seed: 702), replace: true, key: AdapterServer.UserKey)).Status);
        using var unload = new HttpRequestMessage(HttpMethod.Post, "/v1/unload_lora_adapter")
        {
            Content = new StringContent("""{"lora_name":"keyed"}""", Encoding.UTF8, "application/json"),
        };
        unload.Headers.Authorization = new("Bearer", AdapterServer.UserKey);
        using (var response = await server.Client.SendAsync(unload, TestContext.Current.CancellationToken))
            Assert.Equal(403, (int)response.StatusCode);
        var (_, info) = await server.GetAsync("/v1/adapters/keyed", AdapterServer.UserKey);
        Assert.Equal(1, (int)info!["version"]!);
        Assert.False((bool)info["pinned"]!);
    }

    [Fact]
    public async Task Without_a_key_adapters_can_be_neither_used_nor_listed_when_api_keys_are_configured()
    {
        await using var server = await AdapterServer.StartAsync(userKeys: true);
        await server.UploadOkAsync("keyed", TinyAdapters.Lora(seed: 701));
        foreach (var key in new[] { null, "sk-wrong" })
        {
            var (status, body) = await server.PostAsync("/v1/completions", Story.Json(), key);
            Assert.Equal(401, status);
            Assert.Equal("invalid_api_key", (string?)Http.Error(body)["code"]);
            foreach (var path in new[] { "/v1/models", "/v1/adapters", "/v1/adapters/keyed" })
            {
                (status, body) = await server.GetAsync(path, key);
                Assert.True(status == 401, $"GET {path} with key {key ?? "(none)"}: {status} {body?.ToJsonString()}");
                Http.Error(body);
            }
        }
    }
}
