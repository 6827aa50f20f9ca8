using System.Text;
using AdapterServe.Engine;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.Server;

/// <summary>A full waiting queue on the real engine (one running place, one waiting place) answers 429.</summary>
[Collection(RealServerCollection.Name)]
public sealed class QueueTests
{
    [Fact]
    public async Task A_request_beyond_the_waiting_queue_is_429_and_the_queued_one_still_completes()
    {
        var settings = TinyModel.Settings();
        settings["Engine:MaxBatch"] = "1";
        settings["Engine:MaxQueue"] = "1";
        settings["Engine:MaxContext"] = TinyModel.LongContextLength.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await using var factory = new ServerFactory(settings);
        var client = factory.CreateClient();
        var engine = factory.Services.GetRequiredService<IGenerationEngine>();
        await TinyModel.WaitUntilReadyAsync(engine);

        // The one running place: a long stream, held open until the end of the test.
        using var holdRunning = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        using var running = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent("""{"model":"tiny","prompt":"x","max_tokens":4000,"temperature":0,"ignore_eos":true,"stream":true}""", Encoding.UTF8, "application/json"),
        };
        using var runningResponse = await client.SendAsync(running, HttpCompletionOption.ResponseHeadersRead, holdRunning.Token);
        Assert.Equal(200, (int)runningResponse.StatusCode);

        // The one waiting place.
        var queued = Http.PostAsync(client, "/v1/completions", """{"model":"tiny","prompt":"y","max_tokens":2,"ignore_eos":true}""");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (engine.WaitingRequests == 0 && !queued.IsCompleted && DateTime.UtcNow < deadline)
            await Task.Delay(5, TestContext.Current.CancellationToken);
        Assert.Equal(1, engine.WaitingRequests);

        foreach (var (path, json) in new[]
        {
            ("/v1/completions", """{"model":"tiny","prompt":"z","max_tokens":2}"""),
            ("/v1/chat/completions", """{"model":"tiny","messages":[{"role":"user","content":"z"}],"max_tokens":2,"stream":true}"""),
        })
        {
            var (status, body) = await Http.PostAsync(client, path, json);
            Assert.Equal(429, status);
            var error = Http.Error(body);
            Assert.Equal("queue_full", (string?)error["code"]);
            Assert.Equal("rate_limit_error", (string?)error["type"]);
        }

        holdRunning.Cancel();                         // the long stream goes away; the queued request gets its turn
        runningResponse.Dispose();
        var (queuedStatus, queuedBody) = await queued;
        Assert.Equal(200, queuedStatus);
        Assert.Equal(2, (int)queuedBody!["usage"]!["completion_tokens"]!);
    }
}
