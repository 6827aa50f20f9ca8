using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Server.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace AdapterServe.Tests.Server;

/// <summary>Graceful shutdown of the real server process on SIGTERM (the embedded demo model).</summary>
public sealed class ShutdownTests
{
    private static readonly TimeSpan ExitLimit = TimeSpan.FromSeconds(120);

    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    private static string LongRequest(int maxTokens, bool stream) =>
        $$"""{"model":"demo","prompt":"once upon a time","max_tokens":{{maxTokens}},"temperature":0,"ignore_eos":true,"stream":{{(stream ? "true" : "false")}}{{(stream ? ""","stream_options":{"include_usage":true}""" : "")}}}""";

    /// <summary>A running stream: the response and its SSE payloads, read one by one.</summary>
    private sealed class OpenStream : IAsyncDisposable
    {
        public required HttpResponseMessage Response { get; init; }
        public required IAsyncEnumerator<SseItem<string>> Items { get; init; }
        public List<string> Data { get; } = [];

        public static async Task<OpenStream> StartAsync(HttpClient client, string json)
        {
            var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Json(json) };
            var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
            Assert.Equal(200, (int)response.StatusCode);
            var body = await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken);
            return new OpenStream { Response = response, Items = SseParser.Create(body).EnumerateAsync(TestContext.Current.CancellationToken).GetAsyncEnumerator() };
        }

        public async Task ReadAsync(int count)
        {
            for (int i = 0; i < count; i++)
            {
                Assert.True(await Items.MoveNextAsync(), "the stream ended early");
                Data.Add(Items.Current.Data);
            }
        }

        public async Task ReadToEndAsync()
        {
            while (await Items.MoveNextAsync()) Data.Add(Items.Current.Data);
        }

        public async ValueTask DisposeAsync()
        {
            await Items.DisposeAsync();
            Response.Dispose();
        }
    }

    [Fact]
    public async Task Sigterm_drains_health_503_new_requests_503_with_retry_after_the_running_stream_completes_and_the_process_exits_0()
    {
        // Long enough to outlast the checks below, and a drain timeout no loaded test machine reaches (the default, 30 s, is checked below).
        const int maxTokens = 600;
        await using var server = await ServerProcess.StartAsync("--drain-timeout", "600");
        await using var stream = await OpenStream.StartAsync(server.Client, LongRequest(maxTokens, stream: true));
        await stream.ReadAsync(3);

        await server.SignalAsync("TERM");

        var (status, health) = await Http.GetAsync(server.Client, "/health");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (status == 200 && DateTime.UtcNow < deadline)   // the signal is handled asynchronously
        {
            await Task.Delay(20, TestContext.Current.CancellationToken);
            (status, health) = await Http.GetAsync(server.Client, "/health");
        }
        Assert.Equal(503, status);
        Assert.Equal("draining", (string?)health!["status"]);

        using (var refused = await server.Client.PostAsync("/v1/completions", Json(LongRequest(4, stream: false)), TestContext.Current.CancellationToken))
        {
            Assert.Equal(503, (int)refused.StatusCode);
            Assert.True(refused.Headers.RetryAfter?.Delta > TimeSpan.Zero, $"Retry-After: {refused.Headers.RetryAfter}");
            var error = Http.Error(JsonNode.Parse(await refused.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)));
            Assert.Equal("server_shutting_down", (string?)error["code"]);
            Assert.Equal("service_unavailable", (string?)error["type"]);
        }
        Assert.False(stream.Data.Contains("[DONE]"), "the stream should still be running when the checks are done");

        await stream.ReadToEndAsync();
        var chunks = Http.Chunks(stream.Data);
        var errors = chunks.Where(c => c["error"] is not null).Select(c => c.ToJsonString()).ToList();
        Assert.True(errors.Count == 0, $"{string.Join('\n', errors)}\n{server.Output}");
        Assert.Equal("length", (string?)chunks.Single(c => c["choices"]!.AsArray().Any(x => x!["finish_reason"] is not null))["choices"]![0]!["finish_reason"]);
        Assert.Equal(maxTokens, (int)chunks[^1]["usage"]!["completion_tokens"]!);
        Assert.Equal(0, await server.WaitForExitAsync(ExitLimit));
    }

    [Fact]
    public async Task Ctrl_c_past_the_drain_timeout_ends_a_running_stream_with_an_error_chunk_a_running_request_with_503_and_the_process_exits_0()
    {
        await using var server = await ServerProcess.StartAsync("--drain-timeout", "0");   // 0: past the timeout at once (a 2000-token demo stream can finish within 1 s)
        await using var stream = await OpenStream.StartAsync(server.Client, LongRequest(2000, stream: true));
        var whole = server.Client.PostAsync("/v1/completions", Json(LongRequest(2000, stream: false)), TestContext.Current.CancellationToken);
        await stream.ReadAsync(3);

        await server.SignalAsync("INT");

        await stream.ReadToEndAsync();
        var chunks = Http.Chunks(stream.Data);
        Assert.True(chunks[^1]["error"] is not null, $"the stream should end with an error chunk; its last chunks:\n{string.Join('\n', chunks.TakeLast(3).Select(c => c.ToJsonString()))}\n{server.Output}");
        var error = Http.Error(chunks[^1]);
        Assert.Equal("server_shutting_down", (string?)error["code"]);
        Assert.True(chunks.Count > 3, "tokens came before the error");
        using (var response = await whole)
        {
            Assert.Equal(503, (int)response.StatusCode);
            Assert.Equal("server_shutting_down", (string?)Http.Error(JsonNode.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)))["code"]);
        }
        Assert.Equal(0, await server.WaitForExitAsync(ExitLimit));
    }

    [Fact]
    public async Task The_drain_timeout_defaults_to_30_seconds_and_sizes_the_hosts_shutdown_timeout()
    {
        await using var factory = new ServerFactory(TinyModel.Settings());
        var server = factory.Services.GetRequiredService<IOptions<ServerOptions>>().Value;
        var host = factory.Services.GetRequiredService<IOptions<HostOptions>>().Value;
        Assert.Equal(30, server.DrainTimeoutSeconds);
        Assert.Equal(TimeSpan.FromSeconds(30) + ServerDrain.CutOffGrace + ServerDrain.StopMargin, host.ShutdownTimeout);

        await using var shortDrain = new ServerFactory(new Dictionary<string, string?>(TinyModel.Settings()) { ["Server:DrainTimeoutSeconds"] = "2" });
        Assert.Equal(TimeSpan.FromSeconds(2) + ServerDrain.CutOffGrace + ServerDrain.StopMargin, shortDrain.Services.GetRequiredService<IOptions<HostOptions>>().Value.ShutdownTimeout);
    }

    [Fact]
    public void The_drain_timeout_flag_maps_to_its_setting_and_a_negative_value_is_refused()
    {
        Assert.Contains("--Server:DrainTimeoutSeconds=7", CommandLineFlags.Translate(["--drain-timeout", "7"]));
        var result = new ServerOptionsValidator().Validate(null, new ServerOptions { DrainTimeoutSeconds = -1 });
        Assert.True(result.Failed);
        Assert.Contains("--drain-timeout", result.FailureMessage);
    }
}
