using System.Net.ServerSentEvents;
using System.Text;
using System.Threading.Channels;
using AdapterServe.Engine;

namespace AdapterServe.Tests.Server;

/// <summary>
/// What only a scripted engine can show on demand: loading, a refusal of the second of two prompts, failures, pauses
/// between tokens, refusals arriving through the event stream, and the exact request the server hands the engine.
/// </summary>
public sealed class EngineBoundaryTests
{
    private static ServerFactory Server(ScriptedEngine engine) => new(new Dictionary<string, string?>(), engine);

    [Fact]
    public async Task Health_is_503_with_an_OpenAI_error_while_loading_and_200_when_ready()
    {
        var engine = new ScriptedEngine { IsReady = false };
        await using var server = Server(engine);
        var client = server.CreateClient();

        var (status, body) = await Http.GetAsync(client, "/health");
        Assert.Equal(503, status);
        Assert.Equal("model_loading", (string?)Http.Error(body)["code"]);

        engine.IsReady = true;
        (status, body) = await Http.GetAsync(client, "/health");
        Assert.Equal(200, status);
        Assert.Equal("scripted", (string?)body!["model"]);
    }

    [Theory]
    [InlineData("/v1/completions", """{"model":"scripted","prompt":"hi"}""")]
    [InlineData("/v1/chat/completions", """{"model":"scripted","messages":[{"role":"user","content":"hi"}]}""")]
    public async Task Generation_is_503_while_loading(string path, string json)
    {
        var engine = new ScriptedEngine { IsReady = false };
        await using var server = Server(engine);
        var (status, body) = await Http.PostAsync(server.CreateClient(), path, json);
        Assert.Equal(503, status);
        Assert.Equal("model_loading", (string?)Http.Error(body)["code"]);
        Assert.Empty(engine.Submitted);
        (status, body) = await Http.GetAsync(server.CreateClient(), "/v1/models");
        Assert.Equal(503, status);
    }

    [Fact]
    public async Task A_refused_second_prompt_cancels_the_first_one_already_admitted()
    {
        var tokens = new List<CancellationToken>();
        var engine = new ScriptedEngine
        {
            Script = (r, ct) =>
            {
                tokens.Add(ct);
                if (tokens.Count == 2) throw new QueueFullException("full");
                return Channel.CreateUnbounded<GenerationEvent>().Reader;   // never finishes on its own
            },
        };
        await using var server = Server(engine);
        var (status, _) = await Http.PostAsync(server.CreateClient(), "/v1/completions", """{"model":"scripted","prompt":["a","b"]}""");
        Assert.Equal(429, status);
        Assert.True(tokens[0].IsCancellationRequested);
    }

    [Fact]
    public async Task Stream_chunks_leave_while_generation_is_still_running()
    {
        var events = Channel.CreateUnbounded<GenerationEvent>();
        var engine = new ScriptedEngine { Script = (_, _) => events.Reader };
        await using var server = Server(engine);
        events.Writer.TryWrite(new TokenEvent(0, 70, "first", null));

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));   // a buffering server would never deliver the first chunk: fail, don't hang
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent("""{"model":"scripted","prompt":"hi","stream":true}""", Encoding.UTF8, "application/json"),
        };
        using var response = await server.CreateClient().SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        await using var body = await response.Content.ReadAsStreamAsync(timeout.Token);
        await using var items = SseParser.Create(body).EnumerateAsync(timeout.Token).GetAsyncEnumerator(timeout.Token);

        Assert.True(await items.MoveNextAsync());
        Assert.Equal("first", (string?)System.Text.Json.Nodes.JsonNode.Parse(items.Current.Data)!["choices"]![0]!["text"]);

        events.Writer.TryWrite(new TokenEvent(0, 71, " second", null));
        events.Writer.TryWrite(new FinishEvent(0, FinishReason.Length, "", 3, 2));
        events.Writer.TryComplete();
        var rest = new List<string>();
        while (await items.MoveNextAsync()) rest.Add(items.Current.Data);
        var chunks = Http.Chunks(rest);
        Assert.Equal(" second", (string?)chunks[0]["choices"]![0]!["text"]);
        Assert.Equal("length", (string?)chunks[^1]["choices"]![0]!["finish_reason"]);
    }

    [Fact]
    public async Task Engine_failure_mid_stream_becomes_an_error_payload_before_DONE()
    {
        var engine = new ScriptedEngine
        {
            Script = (r, _) =>
            {
                var c = Channel.CreateUnbounded<GenerationEvent>();
                c.Writer.TryWrite(new TokenEvent(0, 70, "a", null));
                c.Writer.TryWrite(new FinishEvent(0, FinishReason.Error, "", 3, 1, "CUDA out of memory"));
                c.Writer.TryComplete();
                return c.Reader;
            },
        };
        await using var server = Server(engine);
        var (status, _, data) = await Http.StreamAsync(server.CreateClient(), "/v1/chat/completions",
            """{"model":"scripted","messages":[{"role":"user","content":"hi"}],"stream":true}""");
        Assert.Equal(200, status);
        var chunks = Http.Chunks(data);
        var error = Http.Error(chunks[^1]);
        Assert.Equal("generation_failed", (string?)error["code"]);
        Assert.Contains("CUDA out of memory", (string?)error["message"]);

        var (plainStatus, body) = await Http.PostAsync(server.CreateClient(), "/v1/completions", """{"model":"scripted","prompt":"hi"}""");
        Assert.Equal(500, plainStatus);
        Assert.Contains("CUDA out of memory", (string?)Http.Error(body)["message"]);
    }

    [Fact]
    public async Task An_unexpected_exception_is_a_500_OpenAI_error_without_internals()
    {
        var engine = new ScriptedEngine { Script = (_, _) => throw new InvalidOperationException("secret internal state 0xdeadbeef") };
        await using var server = Server(engine);
        var (status, body) = await Http.PostAsync(server.CreateClient(), "/v1/completions", """{"model":"scripted","prompt":"hi"}""");
        Assert.Equal(500, status);
        var error = Http.Error(body);
        Assert.Equal("server_error", (string?)error["type"]);
        Assert.DoesNotContain("0xdeadbeef", (string?)error["message"]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Unknown_adapter_reported_through_the_event_stream_is_404(bool stream)
    {
        var engine = new ScriptedEngine
        {
            Script = (r, _) =>
            {
                var c = Channel.CreateUnbounded<GenerationEvent>();
                c.Writer.TryComplete(new AdapterNotFoundException(r.Adapters[0].Name));
                return c.Reader;
            },
        };
        await using var server = Server(engine);
        var (status, body) = await Http.PostAsync(server.CreateClient(), "/v1/completions",
            $$"""{"model":"scripted:zara","prompt":"hi","stream":{{(stream ? "true" : "false")}}}""");
        Assert.Equal(404, status);
        var error = Http.Error(body);
        Assert.Equal("model_not_found", (string?)error["code"]);
        Assert.Equal("model", (string?)error["param"]);
        Assert.Contains("scripted:zara", (string?)error["message"]);
    }

    [Fact]
    public async Task Completion_fields_reach_the_engine_as_one_request_per_prompt()
    {
        var engine = new ScriptedEngine();
        await using var server = Server(engine);
        var (status, body) = await Http.PostAsync(server.CreateClient(), "/v1/completions", """
            {"model":"scripted:zara","prompt":[[5,6,7],[9]],"max_tokens":9,"temperature":0.5,"top_p":0.9,"top_k":-1,
             "n":2,"stop":["x","yz"],"seed":77,"echo":true,"logprobs":3,"ignore_eos":true,"user":"u1",
             "adapters":[{"name":"forest","scale":0.5}]}
            """);
        Assert.Equal(200, status);
        Assert.Equal(2, engine.Submitted.Count);
        var first = engine.Submitted[0];
        Assert.Equal([5, 6, 7], first.PromptTokens);
        Assert.Equal([9], engine.Submitted[1].PromptTokens);
        Assert.Equal(new SamplingParams
        {
            Temperature = 0.5f, TopP = 0.9f, TopK = 0, Seed = 77, MaxTokens = 9, StopStrings = first.Sampling.StopStrings,
            IgnoreEos = true, Logprobs = 3,
        }, first.Sampling);
        Assert.Equal(["x", "yz"], first.Sampling.StopStrings);
        Assert.Equal([new AdapterRef("zara", 1f), new AdapterRef("forest", 0.5f)], first.Adapters);
        Assert.Equal(2, first.N);
        Assert.True(first.PromptLogprobs);
        Assert.Equal(4, body!["choices"]!.AsArray().Count);
    }

    [Fact]
    public async Task Chat_fields_reach_the_engine_with_the_rendered_template_and_no_extra_bos()
    {
        var engine = new ScriptedEngine();
        await using var server = Server(engine);
        var (status, _) = await Http.PostAsync(server.CreateClient(), "/v1/chat/completions", """
            {"model":"scripted","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
             "max_completion_tokens":5,"max_tokens":7,"logprobs":true,"top_logprobs":2,"seed":3}
            """);
        Assert.Equal(200, status);
        var r = Assert.Single(engine.Submitted);
        var expected = engine.Tokenizer.Encode("<|system|>be brief\n<|user|>hi there\n<|assistant|>", addSpecialTokens: false);
        Assert.Equal(expected, r.PromptTokens);
        Assert.Equal(5, r.Sampling.MaxTokens);
        Assert.Equal(2, r.Sampling.Logprobs);
        Assert.Equal(3, r.Sampling.Seed);
        Assert.Empty(r.Adapters);
        Assert.False(r.PromptLogprobs);

        // Without a limit the answer may fill the rest of the context.
        engine.Submitted.Clear();
        (status, _) = await Http.PostAsync(server.CreateClient(), "/v1/chat/completions", """{"model":"scripted","messages":[{"role":"user","content":"hi"}]}""");
        Assert.Equal(200, status);
        var prompt = engine.Tokenizer.Encode("<|user|>hi\n<|assistant|>", addSpecialTokens: false);
        Assert.Equal(engine.Model.ContextLength - prompt.Count, Assert.Single(engine.Submitted).Sampling.MaxTokens);
    }
}
