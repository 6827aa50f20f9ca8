using System.Text.RegularExpressions;
using AdapterServe.Engine;
using AdapterServe.Tests.Engine;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Tests.Server;

/// <summary>How a failed engine step reaches the client: the whole server on the real engine, its adapter port replaced by a <see cref="FaultyAdapterBinder"/>.</summary>
[Collection(StepFailureCollection.Name)]
public sealed partial class StepFailureHttpTests
{
    [GeneratedRegex("step-[0-9a-f]{12}")]
    private static partial Regex ErrorId();

    private static async Task<(ServerFactory Factory, HttpClient Client, LogCapture Logs)> StartAsync()
    {
        var logs = new LogCapture();
        var binder = new FaultyAdapterBinder(Fault.Always, cleanDecodeSteps: 2, TinyModel.Config.NumHiddenLayers);
        var factory = new ServerFactory(TinyModel.Settings(), services: s =>
        {
            s.AddSingleton<IAdapterBinder>(binder);
            s.AddSingleton<ILoggerProvider>(logs);
        });
        var client = factory.CreateClient();
        await TinyModel.WaitUntilReadyAsync(factory.Services.GetRequiredService<IGenerationEngine>());
        return (factory, client, logs);
    }

    [Fact]
    public async Task A_request_whose_step_fails_gets_500_engine_step_failed_with_the_error_id_of_the_log_line()
    {
        var (factory, client, logs) = await StartAsync();
        await using var _ = factory;
        const string isolated = """adapterserve_engine_step_failures_total{outcome="isolated"}""", failed = """adapterserve_engine_step_failures_total{outcome="failed"}""";
        var before = await Metrics.ReadAsync(client);
        var healthy = Http.PostAsync(client, "/v1/completions", """{"model":"tiny","prompt":[3,4,5],"max_tokens":30,"temperature":0,"ignore_eos":true}""");

        var (status, body) = await Http.PostAsync(client, "/v1/completions", $$"""{"model":"{{FaultyAdapterBinder.Name}}","prompt":[11,12,13],"max_tokens":30,"temperature":0,"ignore_eos":true}""");

        Assert.Equal(500, status);
        var error = Http.Error(body);
        Assert.Equal("server_error", (string?)error["type"]);
        Assert.Equal("engine_step_failed", (string?)error["code"]);
        string id = ErrorId().Match((string)error["message"]!).Value;
        Assert.NotEmpty(id);
        Assert.Contains(logs.Entries, e => e.Level == LogLevel.Error && e.Category.EndsWith(nameof(GenerationEngine), StringComparison.Ordinal) && e.Message.Contains(id, StringComparison.Ordinal));
        var (healthyStatus, healthyBody) = await healthy;
        Assert.Equal(200, healthyStatus);
        Assert.Equal("length", (string?)healthyBody!["choices"]![0]!["finish_reason"]);
        var after = await Metrics.ReadAsync(client);   // isolated when the healthy request shared the failing step, failed when it did not
        Assert.Equal(1, after.Value(isolated) + after.Value(failed) - before.Value(isolated) - before.Value(failed));
    }

    [Fact]
    public async Task A_stream_whose_step_fails_ends_with_an_error_chunk_carrying_the_error_id()
    {
        var (factory, client, _) = await StartAsync();
        await using var __ = factory;

        var (status, _, data) = await Http.StreamAsync(client, "/v1/chat/completions",
            $$"""{"model":"{{FaultyAdapterBinder.Name}}","messages":[{"role":"user","content":"hi"}],"max_tokens":30,"temperature":0,"ignore_eos":true,"stream":true}""");

        Assert.Equal(200, status);
        var chunks = Http.Chunks(data);
        Assert.True(chunks.Count > 1, "the first chunks (role, tokens before the fault) come before the error");
        var error = Http.Error(chunks[^1]);
        Assert.Equal("engine_step_failed", (string?)error["code"]);
        Assert.Matches(ErrorId(), (string)error["message"]!);
    }
}
