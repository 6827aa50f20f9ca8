using AdapterServe.Tests.Server;

namespace AdapterServe.Tests.AdapterHttp;

/// <summary>Deleting an adapter that a running stream uses, through the whole server.</summary>
[Collection(AdapterHttpCollection.Name)]
public sealed class AdapterDeleteTests(ReferenceServer reference)
{
    /// <summary>Long enough that the stream still decodes while the deletes are sent (each takes milliseconds).</summary>
    private const int LongTokens = 320;

    [Fact]
    public async Task Delete_during_a_stream_is_409_and_with_wait_completes_after_the_stream_ends()
    {
        var adapter = TinyAdapters.Lora(seed: 501);
        var request = new GreedyRequest("doomed", "Once upon a time", LongTokens);
        var expected = await reference.AloneAsync("doomed", adapter, request);

        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("doomed", adapter);
        await server.UploadOkAsync("warm-up", TinyAdapters.Lora(seed: 502));
        Assert.Equal(200, (await server.DeleteAsync("warm-up")).Status);      // the delete path runs warm below

        await using var stream = await server.OpenStreamAsync(request);
        await stream.ReadTokensAsync(2);

        var (status, body) = await server.DeleteAsync("doomed");
        Assert.True(status == 409, $"DELETE during the stream: {status} {body?.ToJsonString()} (had the {LongTokens}-token stream already finished?)");
        var error = Http.Error(body);
        Assert.Equal("adapter_in_use", (string?)error["code"]);
        Assert.Contains("doomed", (string?)error["message"]);
        Assert.Equal(200, (await server.GetAsync("/v1/adapters/doomed")).Status);     // still there

        var waiting = server.DeleteAsync("doomed", wait: true);
        var streamed = await stream.ReadToEndAsync();
        var (waited, deleted) = await waiting;

        // The stream ran to its end on the adapter, untouched by either delete; then the delete went through.
        streamed.AssertSameAs(expected, "stream on the adapter being deleted");
        Assert.Equal(200, waited);
        Assert.True((bool)deleted!["deleted"]!);
        Assert.Equal(404, (await server.GetAsync("/v1/adapters/doomed")).Status);
        var (after, notFound) = await server.PostAsync("/v1/completions", (request with { MaxTokens = 2 }).Json());
        Assert.Equal(404, after);
        Assert.Equal("model_not_found", (string?)Http.Error(notFound)["code"]);
        Assert.False(Directory.Exists(Path.Combine(server.DataDirectory, "adapters", "doomed")), "the adapter's files are gone");
    }

    [Fact]
    public async Task Delete_with_wait_withdraws_the_adapter_at_once_while_a_request_still_holds_it()
    {
        // One device slot, pinned by another adapter: a request on 'held' is admitted by the server but cannot start,
        // so it holds the adapter for as long as the test wants, with no timing involved.
        var held = TinyAdapters.Lora(seed: 503);
        var request = new GreedyRequest("held", "The cat sat", 8);
        var expected = await reference.AloneAsync("held", held, request);

        await using var server = await AdapterServer.StartAsync(new Dictionary<string, string?> { ["Adapters:Residency:MaxDeviceAdapters"] = "1" });
        await server.UploadOkAsync("pinned", TinyAdapters.Lora(seed: 504));
        await server.UploadOkAsync("held", held);
        Assert.Equal(200, (await server.SendAdminAsync(HttpMethod.Post, "/v1/adapters/pinned/pin")).Status);
        await server.CompleteAsync(new GreedyRequest("pinned", "x", 1));                        // now on the device, for good

        var running = server.CompleteAsync(request);
        await server.WaitUntilAsync(async () => (int)(await server.GetAsync("/v1/adapters/held")).Body!["active_sequences"]! == 1);

        var (status, body) = await server.DeleteAsync("held");
        Assert.Equal(409, status);
        Assert.Equal("adapter_in_use", (string?)Http.Error(body)["code"]);

        var waiting = server.DeleteAsync("held", wait: true);
        // Withdrawn at once: new requests no longer get it, /v1/models no longer lists it; the running one keeps it.
        await server.WaitUntilAsync(async () => (await server.GetAsync("/v1/adapters/held")).Status == 404);
        var (refused, error) = await server.PostAsync("/v1/completions", request.Json());
        Assert.Equal(404, refused);
        Assert.Equal("model_not_found", (string?)Http.Error(error)["code"]);
        var (_, models) = await server.GetAsync("/v1/models");
        Assert.DoesNotContain("held", models!["data"]!.AsArray().Select(c => (string?)c!["id"]));
        Assert.False(waiting.IsCompleted, "the delete waits while a request holds the adapter");
        Assert.False(running.IsCompleted, "the request cannot start while the only device slot is pinned");

        Assert.Equal(200, (await server.SendAdminAsync(HttpMethod.Post, "/v1/adapters/pinned/unpin")).Status);
        (await running).AssertSameAs(expected, "the request that held the adapter while it was deleted");
        Assert.Equal(200, (await waiting).Status);
        Assert.False(Directory.Exists(Path.Combine(server.DataDirectory, "adapters", "held")), "the adapter's files are gone");
    }
}
