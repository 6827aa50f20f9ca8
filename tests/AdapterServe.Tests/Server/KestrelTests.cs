using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterServe.Engine;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.Server;

/// <summary>The real Kestrel server on a loopback port (port 0), driven by a plain <see cref="HttpClient"/>.</summary>
public sealed class KestrelServer : IAsyncLifetime
{
    public ServerFactory Factory { get; private set; } = null!;
    public HttpClient Client { get; private set; } = null!;
    public IGenerationEngine Engine { get; private set; } = null!;

    public async ValueTask InitializeAsync()
    {
        var settings = TinyModel.Settings();
        settings["Server:Host"] = "127.0.0.1";
        settings["Server:Port"] = "0";
        settings["Engine:MaxContext"] = TinyModel.LongContextLength.ToString(System.Globalization.CultureInfo.InvariantCulture);
        Factory = new ServerFactory(settings);
        Factory.UseKestrel();
        Factory.StartServer();
        string address = Factory.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
        Client = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(120) };
        Engine = Factory.Services.GetRequiredService<IGenerationEngine>();
        await TinyModel.WaitUntilReadyAsync(Engine);
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await Factory.DisposeAsync();
    }
}

[Collection(RealServerCollection.Name)]
public sealed class KestrelTests(KestrelServer server) : IClassFixture<KestrelServer>
{
    /// <summary>Streams one request; returns each choice's text and finish reason, by index.</summary>
    private async Task<SortedDictionary<int, string>> StreamAsync(string json)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var response = await server.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
        Assert.Equal(200, (int)response.StatusCode);
        var result = new SortedDictionary<int, string>();
        var data = new List<string>();
        await using var body = await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken);
        await foreach (var item in SseParser.Create(body).EnumerateAsync(TestContext.Current.CancellationToken)) data.Add(item.Data);
        foreach (var chunk in Http.Chunks(data))
            foreach (var choice in chunk["choices"]!.AsArray())
            {
                int index = (int)choice!["index"]!;
                result[index] = (result.GetValueOrDefault(index) ?? "") + (string?)choice["text"] + ((string?)choice["finish_reason"] is { } f ? $"<{f}>" : "");
            }
        return result;
    }

    [Fact]
    public async Task Sixteen_concurrent_streams_complete_and_equal_the_same_requests_one_at_a_time()
    {
        var requests = Enumerable.Range(0, 16).Select(i => JsonSerializer.Serialize(new JsonObject
        {
            ["model"] = "tiny",
            ["prompt"] = i % 4 == 3 ? new JsonArray(3, 40 + i, 7) : $"Story {i}: once upon a time" + new string('!', i),
            ["max_tokens"] = 6 + i % 5 * 3,
            ["temperature"] = 0,
            ["ignore_eos"] = true,
            ["n"] = i % 3 == 0 ? 2 : 1,
            ["stream"] = true,
        })).ToList();

        var alone = new List<SortedDictionary<int, string>>();
        foreach (var r in requests) alone.Add(await StreamAsync(r));
        var together = await Task.WhenAll(requests.Select(r => Task.Run(() => StreamAsync(r))));

        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal(i % 3 == 0 ? 2 : 1, together[i].Count);
            Assert.All(together[i].Values, text => Assert.EndsWith("<length>", text));
            Assert.Equal(alone[i], together[i]);
        }
    }

    [Fact]
    public async Task A_client_that_disconnects_mid_stream_stops_its_generation()
    {
        const string cancelled = """adapterserve_request_success_total{model="tiny",finished_reason="cancelled"}""";
        // The tiny model can finish its 4000 tokens before a disconnect on a loaded machine reaches the engine; such an
        // attempt ends 'length' and proves nothing, so it is repeated (the engine must still be idle after each).
        double counted = 0;
        for (int attempt = 0; attempt < 3 && counted == 0; attempt++)
        {
            double before = (await Metrics.ReadAsync(server.Client)).Value(cancelled);
            using var disconnect = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
            using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
            {
                Content = new StringContent("""{"model":"tiny","prompt":"x","max_tokens":4000,"temperature":0,"ignore_eos":true,"stream":true}""", Encoding.UTF8, "application/json"),
            })
            using (var response = await server.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, disconnect.Token))
            {
                await using var body = await response.Content.ReadAsStreamAsync(disconnect.Token);
                await using var items = SseParser.Create(body).EnumerateAsync(disconnect.Token).GetAsyncEnumerator(disconnect.Token);
                Assert.True(await items.MoveNextAsync());
                Assert.True(await items.MoveNextAsync());
                disconnect.Cancel();
            }

            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (server.Engine.RunningSequences != 0 && DateTime.UtcNow < deadline)
                await Task.Delay(20, TestContext.Current.CancellationToken);
            Assert.Equal(0, server.Engine.RunningSequences);
            // The request's outcome is counted as its sequence leaves the engine: allow the metric a moment to follow.
            var countedBy = DateTime.UtcNow.AddSeconds(3);
            while ((counted = (await Metrics.ReadAsync(server.Client)).Value(cancelled) - before) == 0 && DateTime.UtcNow < countedBy)
                await Task.Delay(20, TestContext.Current.CancellationToken);
        }
        Assert.Equal(1, counted);
    }
}
