using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterServe.Engine;
using AdapterServe.Modeling.Tokenization;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.Server;

/// <summary>
/// Request bounds (n, logprobs, top_logprobs, stop, prompt bytes, body bytes) and the per-client rate limit, on the
/// scripted engine: what reaches the engine and the tokenizer is observable there.
/// </summary>
public sealed class LimitsTests
{
    private const string C = "/v1/completions";
    private const string Chat = "/v1/chat/completions";

    private static ServerFactory Server(ScriptedEngine engine, Dictionary<string, string?>? settings = null) => new(settings ?? [], engine);

    private static string Completion(string prompt) => new JsonObject { ["model"] = "scripted", ["prompt"] = prompt, ["max_tokens"] = 1 }.ToJsonString();

    private static string ChatOf(string content) =>
        new JsonObject { ["model"] = "scripted", ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = content }), ["max_tokens"] = 1 }.ToJsonString();

    [Theory]
    [InlineData(C, "max_tokens", 2147483646)]
    [InlineData(C, "max_tokens", 2147483647)]
    [InlineData(Chat, "max_tokens", 2147483646)]
    [InlineData(Chat, "max_tokens", 2147483647)]
    [InlineData(Chat, "max_completion_tokens", 2147483647)]
    public async Task Max_tokens_near_int_max_with_a_short_prompt_is_400_like_any_oversize_value(string path, string field, int maxTokens)
    {
        var engine = new ScriptedEngine();
        await using var server = Server(engine);
        var body = JsonNode.Parse(path == C ? Completion("hi") : ChatOf("hi"))!.AsObject();
        body.Remove("max_tokens");
        body[field] = maxTokens;

        var (status, response) = await Http.PostAsync(server.CreateClient(), path, body.ToJsonString());

        Assert.True(status == 400, $"{status} {response?.ToJsonString()}");
        var error = Http.Error(response);
        Assert.Equal(field, (string?)error["param"]);
        Assert.Equal("context_length_exceeded", (string?)error["code"]);
        Assert.Contains(maxTokens.ToString(CultureInfo.InvariantCulture), (string?)error["message"]);
        Assert.Empty(engine.Submitted);
    }

    [Theory]
    [InlineData(C, "prompt")]
    [InlineData(Chat, "messages")]
    public async Task Prompt_text_beyond_the_byte_limit_is_413_and_never_reaches_the_tokenizer(string path, string param)
    {
        var tokenizer = new CountingTokenizer();
        var engine = new ScriptedEngine { Tokenizer = tokenizer };
        await using var server = Server(engine, new() { ["Server:Limits:MaxPromptBytes"] = "40" });
        var client = server.CreateClient();
        // 'é' is two bytes in UTF-8: 21 characters are 42 bytes, over the limit although under it in characters.
        string text = new('é', 21);

        var (status, response) = await Http.PostAsync(client, path, path == C ? Completion(text) : ChatOf(text));

        Assert.True(status == 413, $"{status} {response?.ToJsonString()}");
        var error = Http.Error(response);
        Assert.Equal(param, (string?)error["param"]);
        Assert.Equal("prompt_too_large", (string?)error["code"]);
        Assert.Contains("42 bytes", (string?)error["message"]);
        Assert.Contains("at most 40 bytes", (string?)error["message"]);
        Assert.Equal(0, tokenizer.Calls);
        Assert.Empty(engine.Submitted);

        // At the limit (20 × 2 bytes) the prompt is tokenized and served (the scripted model's context is 64 tokens).
        (status, response) = await Http.PostAsync(client, path, path == C ? Completion(new string('é', 20)) : ChatOf(new string('é', 20)));
        Assert.True(status == 200, $"{status} {response?.ToJsonString()}");
        Assert.True(tokenizer.Calls > 0);
    }

    [Fact]
    public async Task The_byte_limit_counts_every_prompt_of_a_batch_and_every_message_together()
    {
        var tokenizer = new CountingTokenizer();
        var engine = new ScriptedEngine { Tokenizer = tokenizer };
        await using var server = Server(engine, new() { ["Server:Limits:MaxPromptBytes"] = "1000" });
        var client = server.CreateClient();
        string half = new('a', 600);

        var (status, response) = await Http.PostAsync(client, C, new JsonObject { ["model"] = "scripted", ["prompt"] = new JsonArray(half, half), ["max_tokens"] = 1 }.ToJsonString());
        Assert.Equal(413, status);
        Assert.Equal("prompt", (string?)Http.Error(response)["param"]);

        var messages = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = half }, new JsonObject { ["role"] = "assistant", ["content"] = half });
        (status, response) = await Http.PostAsync(client, Chat, new JsonObject { ["model"] = "scripted", ["messages"] = messages, ["max_tokens"] = 1 }.ToJsonString());
        Assert.Equal(413, status);
        Assert.Equal("messages", (string?)Http.Error(response)["param"]);
        Assert.Equal(0, tokenizer.Calls);
    }

    [Fact]
    public async Task A_body_beyond_the_body_limit_is_413_before_it_is_parsed()
    {
        var tokenizer = new CountingTokenizer();
        var engine = new ScriptedEngine { Tokenizer = tokenizer };
        await using var server = Server(engine, new() { ["Server:Limits:MaxRequestBodyBytes"] = "10000" });

        var (status, response) = await Http.PostAsync(server.CreateClient(), C, Completion(new string('a', 20_000)));

        Assert.True(status == 413, $"{status} {response?.ToJsonString()}");
        var error = Http.Error(response);
        Assert.Equal("request_too_large", (string?)error["code"]);
        Assert.Contains("10000", (string?)error["message"]);
        Assert.Equal(0, tokenizer.Calls);
    }

    public static TheoryData<string, string, string> OverConfiguredBounds() => new()
    {
        // path, body, param
        { C, """{"model":"scripted","prompt":"a","max_tokens":1,"n":3}""", "n" },
        { C, """{"model":"scripted","prompt":"a","max_tokens":1,"logprobs":2}""", "logprobs" },
        { C, """{"model":"scripted","prompt":"a","max_tokens":1,"stop":["x","y"]}""", "stop" },
        { Chat, """{"model":"scripted","messages":[{"role":"user","content":"a"}],"max_tokens":1,"logprobs":true,"top_logprobs":3}""", "top_logprobs" },
        { Chat, """{"model":"scripted","messages":[{"role":"user","content":"a"}],"max_tokens":1,"n":3}""", "n" },
    };

    [Theory]
    [MemberData(nameof(OverConfiguredBounds))]
    public async Task Configured_bounds_on_n_logprobs_and_stop_are_400_naming_the_field(string path, string body, string param)
    {
        var engine = new ScriptedEngine();
        await using var server = Server(engine, new()
        {
            ["Server:Limits:MaxN"] = "2", ["Server:Limits:MaxLogprobs"] = "1", ["Server:Limits:MaxTopLogprobs"] = "2", ["Server:Limits:MaxStopStrings"] = "1",
        });
        var client = server.CreateClient();

        var (status, response) = await Http.PostAsync(client, path, body);

        Assert.True(status == 400, $"{status} {response?.ToJsonString()}");
        var error = Http.Error(response);
        Assert.Equal(param, (string?)error["param"]);
        Assert.Equal("invalid_value", (string?)error["code"]);
        Assert.Contains(param, (string?)error["message"]);
        Assert.Empty(engine.Submitted);

        // One step down, at the bound, it is served.
        string atBound = body.Replace("\"n\":3", "\"n\":2").Replace("\"logprobs\":2", "\"logprobs\":1").Replace("[\"x\",\"y\"]", "[\"x\"]").Replace("\"top_logprobs\":3", "\"top_logprobs\":2");
        (status, response) = await Http.PostAsync(client, path, atBound);
        Assert.True(status == 200, $"{atBound} → {status} {response?.ToJsonString()}");
    }

    [Fact]
    public async Task The_default_bounds_are_OpenAIs()
    {
        var engine = new ScriptedEngine();
        await using var server = Server(engine);
        var client = server.CreateClient();
        foreach (var (path, body, param) in new[]
        {
            (C, """{"model":"scripted","prompt":"a","max_tokens":1,"n":129}""", "n"),
            (C, """{"model":"scripted","prompt":"a","max_tokens":1,"logprobs":6}""", "logprobs"),
            (C, """{"model":"scripted","prompt":"a","max_tokens":1,"stop":["a","b","c","d","e"]}""", "stop"),
            (Chat, """{"model":"scripted","messages":[{"role":"user","content":"a"}],"max_tokens":1,"logprobs":true,"top_logprobs":21}""", "top_logprobs"),
        })
        {
            var (status, response) = await Http.PostAsync(client, path, body);
            Assert.True(status == 400, $"{body} → {status}");
            Assert.Equal(param, (string?)Http.Error(response)["param"]);
        }
    }

    [Fact]
    public async Task The_rate_limit_is_per_API_key_and_answers_429_with_Retry_After()
    {
        var engine = new ScriptedEngine();
        await using var server = Server(engine, new()
        {
            ["Server:RateLimit:RequestsPerMinute"] = "1", ["Server:RateLimit:Burst"] = "2",
            ["Server:ApiKeys:0"] = "sk-a", ["Server:ApiKeys:1"] = "sk-b",
        });
        var client = server.CreateClient();

        for (int i = 0; i < 2; i++) Assert.Equal(200, (await Http.PostAsync(client, C, Completion("hi"), "sk-a")).Status);

        using var request = new HttpRequestMessage(HttpMethod.Post, C) { Content = new StringContent(Completion("hi"), Encoding.UTF8, "application/json") };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", "sk-a");
        using var refused = await client.SendAsync(request, TestContext.Current.CancellationToken);
        Assert.Equal(429, (int)refused.StatusCode);
        var retryAfter = Assert.Single(refused.Headers.GetValues("Retry-After"));
        Assert.InRange(int.Parse(retryAfter, CultureInfo.InvariantCulture), 1, 60);
        var error = Http.Error(JsonNode.Parse(await refused.Content.ReadAsStringAsync(TestContext.Current.CancellationToken)));
        Assert.Equal("rate_limit_error", (string?)error["type"]);
        Assert.Equal("rate_limit_exceeded", (string?)error["code"]);
        Assert.Equal(2, engine.Submitted.Count);

        // Another key has its own budget; /health and /metrics are not limited.
        Assert.Equal(200, (await Http.PostAsync(client, C, Completion("hi"), "sk-b")).Status);
        Assert.Equal(200, (await Http.GetAsync(client, "/v1/models", "sk-b")).Status);
        for (int i = 0; i < 5; i++) Assert.Equal(200, (await Http.GetAsync(client, "/health")).Status);
    }

    [Fact]
    public async Task Without_API_keys_the_rate_limit_is_per_client_address()
    {
        var engine = new ScriptedEngine();
        await using var server = Server(engine, new() { ["Server:RateLimit:RequestsPerMinute"] = "1" });
        var client = server.CreateClient();

        Assert.Equal(200, (await Http.PostAsync(client, C, Completion("hi"))).Status);
        var (status, response) = await Http.PostAsync(client, Chat, ChatOf("hi"));
        Assert.Equal(429, status);
        Assert.Equal("rate_limit_exceeded", (string?)Http.Error(response)["code"]);
    }

    [Fact]
    public async Task The_rate_limit_is_off_by_default()
    {
        var engine = new ScriptedEngine();
        await using var server = Server(engine);
        var client = server.CreateClient();
        for (int i = 0; i < 30; i++) Assert.Equal(200, (await Http.PostAsync(client, C, Completion("hi"))).Status);
        Assert.Equal(30, engine.Submitted.Count);
    }

    [Theory]
    [InlineData("adapter 'zara' failed to load: /var/lib/adapterserve/adapters/zara/v3/adapter_model.safetensors: header too long", "/var/lib", "header too long")]
    [InlineData("C:\\models\\llama\\model.safetensors: weight 'lm_head' is missing", "C:\\models", "weight 'lm_head' is missing")]
    [InlineData("CUDA out of memory", null, "CUDA out of memory")]
    public async Task Engine_errors_reach_the_client_without_server_paths(string engineError, string? path, string kept)
    {
        var engine = new ScriptedEngine
        {
            Script = (r, _) =>
            {
                var c = System.Threading.Channels.Channel.CreateUnbounded<GenerationEvent>();
                c.Writer.TryWrite(new FinishEvent(0, FinishReason.Error, "", r.PromptTokens.Count, 0, engineError));
                c.Writer.TryComplete();
                return c.Reader;
            },
        };
        await using var server = Server(engine);

        var (status, response) = await Http.PostAsync(server.CreateClient(), C, Completion("hi"));

        Assert.Equal(500, status);
        string message = (string)Http.Error(response)["message"]!;
        Assert.Contains(kept, message);
        if (path is not null)
        {
            Assert.DoesNotContain(path, message);
            Assert.Contains("<server path>", message);
        }
    }

    /// <summary>The scripted byte tokenizer, counting every call that tokenizes or renders a prompt.</summary>
    private sealed class CountingTokenizer : ITextTokenizer
    {
        private readonly ByteTokenizer _inner = new();
        private int _calls;

        public int Calls => Volatile.Read(ref _calls);
        public int VocabSize => _inner.VocabSize;
        public int? BosTokenId => _inner.BosTokenId;
        public IReadOnlyList<int> EosTokenIds => _inner.EosTokenIds;

        public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true)
        {
            Interlocked.Increment(ref _calls);
            return _inner.Encode(text, addSpecialTokens);
        }

        public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = true) => _inner.Decode(ids, skipSpecialTokens);
        public string TokenText(int id) => _inner.TokenText(id);
        public bool IsSpecial(int id) => _inner.IsSpecial(id);

        public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
        {
            Interlocked.Increment(ref _calls);
            return _inner.ApplyChatTemplate(messages, addGenerationPrompt);
        }
    }
}

/// <summary>The same bounds on the real engine and its tokenizer: the integer-overflow case, and the engine's own check.</summary>
[Collection(RealServerCollection.Name)]
public sealed class RealEngineLimitsTests(RealServer server)
{
    [Theory]
    [InlineData(2147483646)]
    [InlineData(2147483647)]
    public async Task The_engine_refuses_max_tokens_near_int_max_itself(int maxTokens)
    {
        var request = new GenerationRequest
        {
            RequestId = "overflow", PromptTokens = [1, 2, 3], N = 1,
            Sampling = new SamplingParams { Temperature = 0, MaxTokens = maxTokens },
        };
        Assert.Throws<ContextLengthExceededException>(() => server.Engine.Submit(request, TestContext.Current.CancellationToken));
        var (status, body) = await server.PostAsync("/v1/completions", $$"""{"model":"tiny","prompt":"Once","max_tokens":{{maxTokens}}}""");
        Assert.Equal(400, status);
        Assert.Equal("context_length_exceeded", (string?)Http.Error(body)["code"]);
    }

    [Fact]
    public async Task The_chat_template_error_does_not_name_the_servers_model_directory()
    {
        string dir = TinyModel.Write("odd-template-paths");
        string config = Path.Combine(dir, "tokenizer_config.json");
        var json = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        json["chat_template"] = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}";   // no built-in family
        File.WriteAllText(config, json.ToJsonString());

        await using var factory = new ServerFactory(TinyModel.Settings(dir));
        var client = factory.CreateClient();
        await TinyModel.WaitUntilReadyAsync(factory.Services.GetRequiredService<IGenerationEngine>());
        var (status, body) = await Http.PostAsync(client, "/v1/chat/completions", """{"model":"tiny","messages":[{"role":"user","content":"hi"}]}""");

        Assert.Equal(400, status);
        string message = (string)Http.Error(body)["message"]!;
        Assert.Contains("chat template", message);
        Assert.DoesNotContain(dir, message);
        Assert.DoesNotContain(Path.GetTempPath().TrimEnd(Path.DirectorySeparatorChar), message);
        Assert.DoesNotContain("odd-template-paths", message);
    }
}
