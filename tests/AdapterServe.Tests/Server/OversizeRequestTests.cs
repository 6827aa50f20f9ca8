using System.Diagnostics;
using System.Runtime;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Engine;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.Server;

/// <summary>Runs alone (no other test allocates meanwhile), so the process's memory before and after is this test's.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MemoryMeasurementCollection
{
    public const string Name = "MemoryMeasurement";
}

/// <summary>10 MB prompts on the real server over Kestrel: refused on their byte length before tokenizing, and the memory comes back.</summary>
[Collection(MemoryMeasurementCollection.Name)]
public sealed class OversizeRequestTests
{
    private const int TenMegabytes = 10_000_000;

    private static async Task<(ServerFactory Factory, HttpClient Client)> StartKestrelAsync(Dictionary<string, string?> extra)
    {
        var settings = TinyModel.Settings();
        settings["Server:Host"] = "127.0.0.1";
        settings["Server:Port"] = "0";
        foreach (var (k, v) in extra) settings[k] = v;
        var factory = new ServerFactory(settings);
        factory.UseKestrel();
        factory.StartServer();
        string address = factory.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
        var client = new HttpClient { BaseAddress = new Uri(address), Timeout = TimeSpan.FromSeconds(120) };
        await TinyModel.WaitUntilReadyAsync(factory.Services.GetRequiredService<IGenerationEngine>());
        return (factory, client);
    }

    /// <summary>
    /// A completion request whose prompt is 10 MB of words never seen before (what a tokenizer's cache would keep), built
    /// into a plain array before the measurement: the test's own string building and JSON writing would otherwise leave
    /// large arrays in the shared pools and blur it.
    /// </summary>
    private static byte[] TenMegabytePrompt(int seed)
    {
        var text = new StringBuilder("{\"model\":\"tiny\",\"max_tokens\":1,\"prompt\":\"", TenMegabytes + 64);
        for (int word = 0; text.Length < TenMegabytes; word++) text.Append("tale").Append(seed).Append('x').Append(word).Append(' ');
        return Encoding.UTF8.GetBytes(text.Append("\"}").ToString());
    }

    private static ByteArrayContent Json(byte[] body)
    {
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        return content;
    }

    /// <summary>Managed heap after full, compacting collections (large objects included).</summary>
    private static long SettledHeap()
    {
        for (int i = 0; i < 3; i++)
        {
            GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
            GC.WaitForPendingFinalizers();
        }
        return GC.GetTotalMemory(forceFullCollection: true);
    }

    [Fact]
    public async Task Sixteen_ten_megabyte_prompts_in_a_row_are_413_on_their_bytes_and_the_memory_returns()
    {
        // The body limit raised above 10 MB so that each prompt is parsed and meets the prompt-bytes check (the worse case).
        var (factory, client) = await StartKestrelAsync(new() { ["Server:Limits:MaxRequestBodyBytes"] = "33554432" });
        await using var _ = factory;
        using var __ = client;

        var bodies = Enumerable.Range(0, 18).Select(TenMegabytePrompt).ToArray();
        int next = 0;
        async Task PostOneAsync()
        {
            using var content = Json(bodies[next++]);
            using var response = await client.PostAsync("/v1/completions", content, TestContext.Current.CancellationToken);
            var body = JsonNode.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
            Assert.True((int)response.StatusCode == 413, $"{(int)response.StatusCode} {body?.ToJsonString()}");
            var error = Http.Error(body);
            Assert.Equal("prompt_too_large", (string?)error["code"]);
            Assert.Equal("prompt", (string?)error["param"]);
        }

        for (int i = 0; i < 2; i++) await PostOneAsync();     // warm-up: JIT, buffer pools
        long heapBefore = SettledHeap();
        long workingSetBefore = Process.GetCurrentProcess().WorkingSet64;

        for (int i = 0; i < 16; i++) await PostOneAsync();

        long heapGrowth = SettledHeap() - heapBefore;
        long workingSetGrowth = Process.GetCurrentProcess().WorkingSet64 - workingSetBefore;
        // Before the fix each such request was tokenized in full and kept ~250 MB: 16 of them grew the process by gigabytes.
        Assert.True(heapGrowth < 128L << 20, $"managed heap grew by {heapGrowth >> 20} MB over 16 oversize prompts");
        Assert.True(workingSetGrowth < 1L << 30, $"working set grew by {workingSetGrowth >> 20} MB over 16 oversize prompts");

        // The server still serves ordinary requests.
        var (status, ok) = await Http.PostAsync(client, "/v1/completions", """{"model":"tiny","prompt":"Once upon","max_tokens":2}""");
        Assert.True(status == 200, ok?.ToJsonString());
    }

    [Fact]
    public async Task Kestrel_cuts_a_chunked_body_beyond_the_generation_body_limit_with_413()
    {
        var (factory, client) = await StartKestrelAsync(new() { ["Server:Limits:MaxRequestBodyBytes"] = "100000" });
        await using var _ = factory;
        using var __ = client;

        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions")
        {
            Content = new StringContent(
                new JsonObject { ["model"] = "tiny", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = new string('a', 300_000) }) }.ToJsonString(),
                Encoding.UTF8, "application/json"),
        };
        request.Headers.TransferEncodingChunked = true;     // no Content-Length: only the server's body limit can stop it
        request.Content.Headers.ContentLength = null;
        using var response = await client.SendAsync(request, TestContext.Current.CancellationToken);

        Assert.Equal(413, (int)response.StatusCode);
        var error = Http.Error(JsonNode.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)));
        Assert.Equal("request_too_large", (string?)error["code"]);

        // A 10 MB body with the default limits (8 MiB) is refused on its declared length without being read.
        using var big = Json(TenMegabytePrompt(1));
        var (defaultFactory, defaultClient) = await StartKestrelAsync([]);
        await using var ___ = defaultFactory;
        using var ____ = defaultClient;
        using var refused = await defaultClient.PostAsync("/v1/completions", big, TestContext.Current.CancellationToken);
        Assert.Equal(413, (int)refused.StatusCode);
        Assert.Equal("request_too_large", (string?)Http.Error(JsonNode.Parse(await refused.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)))["code"]);
    }
}
