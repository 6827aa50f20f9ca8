using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Engine;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.Server;

/// <summary>
/// The real server (Program) with configuration overrides and, optionally, the engine replaced by a double. Unless the
/// settings name a data folder, the server gets a fresh temporary <c>Server:DataDir</c> (removed on dispose), never the
/// per-user default.
/// </summary>
public sealed class ServerFactory(IReadOnlyDictionary<string, string?> settings, IGenerationEngine? engine = null, Action<IServiceCollection>? services = null)
    : WebApplicationFactory<Program>
{
    private readonly string _dataRoot = Path.Combine(Path.GetTempPath(), "adapterserve-tests", "data", Guid.NewGuid().ToString("N"));

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        try { if (Directory.Exists(_dataRoot)) Directory.Delete(_dataRoot, recursive: true); }
        catch (IOException) { }
    }

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        if (!settings.ContainsKey("Server:DataDir") && !settings.ContainsKey("Adapters:DataDirectory")) builder.UseSetting("Server:DataDir", _dataRoot);
        foreach (var (key, value) in settings) builder.UseSetting(key, value);
        builder.ConfigureTestServices(s =>
        {
            if (engine is not null) s.AddSingleton(engine);
            services?.Invoke(s);
        });
    }
}

/// <summary>HTTP helpers: JSON in, (status, JSON) out; SSE payloads via <see cref="SseParser"/>.</summary>
public static class Http
{
    public static async Task<(int Status, JsonNode? Body)> PostAsync(HttpClient client, string path, string json, string? apiKey = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        if (apiKey is not null) request.Headers.Authorization = new("Bearer", apiKey);
        using var response = await client.SendAsync(request, TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, await ReadJsonAsync(response));
    }

    public static async Task<(int Status, JsonNode? Body)> GetAsync(HttpClient client, string path, string? apiKey = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, path);
        if (apiKey is not null) request.Headers.Authorization = new("Bearer", apiKey);
        using var response = await client.SendAsync(request, TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, await ReadJsonAsync(response));
    }

    private static async Task<JsonNode?> ReadJsonAsync(HttpResponseMessage response)
    {
        string text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return text.Length == 0 ? null : JsonNode.Parse(text);
    }

    /// <summary>POSTs with <c>stream: true</c> already in <paramref name="json"/>; returns every SSE data payload (the last should be [DONE]).</summary>
    public static async Task<(int Status, string? ContentType, List<string> Data)> StreamAsync(HttpClient client, string path, string json)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
        var data = new List<string>();
        await using var body = await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken);
        await foreach (var item in SseParser.Create(body).EnumerateAsync(TestContext.Current.CancellationToken)) data.Add(item.Data);
        return ((int)response.StatusCode, response.Content.Headers.ContentType?.MediaType, data);
    }

    /// <summary>The JSON chunks of a stream (everything before [DONE]); asserts that [DONE] ends it.</summary>
    public static List<JsonNode> Chunks(List<string> data)
    {
        Assert.NotEmpty(data);
        Assert.Equal("[DONE]", data[^1]);
        Assert.DoesNotContain("[DONE]", data[..^1]);
        return data[..^1].Select(d => JsonNode.Parse(d)!).ToList();
    }

    /// <summary>Asserts the OpenAI error shape and returns the error object.</summary>
    public static JsonObject Error(JsonNode? body)
    {
        Assert.NotNull(body);
        var error = body!["error"]!.AsObject();
        Assert.True(error.ContainsKey("message") && error.ContainsKey("type") && error.ContainsKey("param") && error.ContainsKey("code"), body.ToJsonString());
        Assert.False(string.IsNullOrWhiteSpace((string?)error["message"]));
        return error;
    }
}
