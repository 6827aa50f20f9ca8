using System.Collections.Concurrent;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Tests.Bench;

/// <summary>
/// A real Kestrel server on a loopback port that speaks the streaming OpenAI completions protocol: one
/// <c>data:</c> chunk per token (exactly max_tokens of them), a usage chunk, then <c>data: [DONE]</c>. It counts what
/// it served, so a test can compare the load generator's report with what really happened on the wire.
/// </summary>
public sealed class FakeCompletionsServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    public Uri Url { get; }
    public ConcurrentDictionary<string, int> RequestsPerModel { get; } = new();
    public int TokensSent => _tokensSent;
    private int _tokensSent;

    private FakeCompletionsServer(WebApplication app, Uri url) => (_app, Url) = (app, url);

    public static async Task<FakeCompletionsServer> StartAsync(IReadOnlyList<string> models, string apiKey)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        var app = builder.Build();
        FakeCompletionsServer? self = null;
        app.MapPost("/v1/completions", async (HttpContext http) =>
        {
            if (http.Request.Headers.Authorization.ToString() != "Bearer " + apiKey)
            {
                http.Response.StatusCode = 401;
                await http.Response.WriteAsync("""{"error":{"message":"bad api key"}}""");
                return;
            }
            var body = (await JsonNode.ParseAsync(http.Request.Body))!;
            string model = body["model"]!.GetValue<string>();
            int maxTokens = body["max_tokens"]!.GetValue<int>();
            if (!models.Contains(model))
            {
                http.Response.StatusCode = 404;
                await http.Response.WriteAsync(new JsonObject { ["error"] = new JsonObject { ["message"] = $"The model '{model}' does not exist." } }.ToJsonString());
                return;
            }
            self!.RequestsPerModel.AddOrUpdate(model, 1, (_, n) => n + 1);
            http.Response.ContentType = "text/event-stream";
            for (int i = 0; i < maxTokens; i++)
            {
                var chunk = new JsonObject { ["object"] = "text_completion", ["model"] = model, ["choices"] = new JsonArray(new JsonObject { ["index"] = 0, ["text"] = $" w{i}", ["finish_reason"] = null }) };
                await http.Response.WriteAsync($"data: {chunk.ToJsonString()}\n\n");
                await http.Response.Body.FlushAsync();
                Interlocked.Increment(ref self._tokensSent);
                await Task.Delay(1);
            }
            var last = new JsonObject { ["choices"] = new JsonArray(new JsonObject { ["index"] = 0, ["text"] = "", ["finish_reason"] = "length" }) };
            var usage = new JsonObject { ["choices"] = new JsonArray(), ["usage"] = new JsonObject { ["prompt_tokens"] = 5, ["completion_tokens"] = maxTokens, ["total_tokens"] = 5 + maxTokens } };
            await http.Response.WriteAsync($"data: {last.ToJsonString()}\n\ndata: {usage.ToJsonString()}\n\ndata: [DONE]\n\n");
        });
        await app.StartAsync();
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        self = new FakeCompletionsServer(app, new Uri(address));
        return self;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
