using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace AdapterServe.Tests.Server;

/// <summary>Every field's checks and every error path, on the real engine: status, OpenAI error shape, the <c>param</c> at fault and the code.</summary>
[Collection(RealServerCollection.Name)]
public sealed class ValidationTests(RealServer server)
{
    private const string C = "/v1/completions";
    private const string Chat = "/v1/chat/completions";

    private static readonly string LongIds = JsonSerializer.Serialize(Enumerable.Repeat(5, TinyModel.ContextLength + 10));
    private static readonly string LongText = JsonSerializer.Serialize(string.Concat(Enumerable.Repeat("once upon a time ", TinyModel.ContextLength)));

    public static TheoryData<string, string, int, string?, string?> Cases() => new()
    {
        // path, body, status, param, code
        { C, """{"prompt":"a"}""", 400, "model", "invalid_value" },
        { C, """{"model":"","prompt":"a"}""", 400, "model", "invalid_value" },
        { C, """{"model":"tiny:","prompt":"a"}""", 400, "model", "invalid_value" },
        { C, """{"model":5,"prompt":"a"}""", 400, "model", "invalid_value" },
        { C, """{"model":"nope","prompt":"a"}""", 404, "model", "model_not_found" },
        { C, """{"model":"tiny:nope","prompt":"a"}""", 404, "model", "model_not_found" },
        { C, """{"model":"other-base:zara","prompt":"a"}""", 404, "model", "model_not_found" },
        { C, """{"model":"tiny","prompt":"a","adapters":[{"name":"zara","scale":0.5}]}""", 404, "adapters", "model_not_found" },
        { C, """{"model":"tiny","prompt":"a","adapters":[{"name":""}]}""", 400, "adapters[0].name", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","adapters":[{"scale":1}]}""", 400, "adapters[0].name", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","adapters":[{"name":"x","scale":"big"}]}""", 400, "adapters[0].scale", "invalid_value" },
        { C, """{"model":"tiny:x","prompt":"a","adapters":[{"name":"x"}]}""", 400, "adapters[0].name", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","adapters":{"name":"x"}}""", 400, "adapters", "invalid_value" },
        { C, """{"model":"tiny"}""", 400, "prompt", "invalid_value" },
        { C, """{"model":"tiny","prompt":5}""", 400, "prompt", "invalid_value" },
        { C, """{"model":"tiny","prompt":[]}""", 400, "prompt", "invalid_value" },
        { C, """{"model":"tiny","prompt":[[]]}""", 400, "prompt", "invalid_value" },
        { C, """{"model":"tiny","prompt":[1,"a"]}""", 400, "prompt", "invalid_value" },
        { C, """{"model":"tiny","prompt":[1.5]}""", 400, "prompt", "invalid_value" },
        { C, """{"model":"tiny","prompt":[-1]}""", 400, "prompt", "invalid_value" },
        { C, """{"model":"tiny","prompt":[[1],[2,{}]]}""", 400, "prompt", "invalid_value" },
        { C, """{"model":"tiny","prompt":[3,320]}""", 400, "prompt", "invalid_value" },
        { C, $$"""{"model":"tiny","prompt":{{LongIds}}}""", 413, "prompt", "context_length_exceeded" },
        { C, $$"""{"model":"tiny","prompt":{{LongText}}}""", 413, "prompt", "context_length_exceeded" },
        { C, $$"""{"model":"tiny","prompt":["a",{{LongText}}]}""", 413, "prompt", "context_length_exceeded" },
        { C, """{"model":"tiny","prompt":"a","max_tokens":1024}""", 400, "max_tokens", "context_length_exceeded" },
        { C, """{"model":"tiny","prompt":"a","max_tokens":0}""", 400, "max_tokens", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","max_tokens":"5"}""", 400, "max_tokens", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","max_tokens":1.5}""", 400, "max_tokens", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","temperature":2.5}""", 400, "temperature", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","temperature":-0.1}""", 400, "temperature", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","temperature":"hot"}""", 400, "temperature", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","top_p":0}""", 400, "top_p", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","top_p":1.01}""", 400, "top_p", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","top_k":-2}""", 400, "top_k", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","n":0}""", 400, "n", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","n":129}""", 400, "n", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","n":33}""", 400, "n", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","stop":["a","b","c","d","e"]}""", 400, "stop", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","stop":""}""", 400, "stop", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","stop":7}""", 400, "stop", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","stop":["a",7]}""", 400, "stop", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","seed":"x"}""", 400, "seed", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","echo":"yes"}""", 400, "echo", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","logprobs":6}""", 400, "logprobs", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","logprobs":-1}""", 400, "logprobs", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","stream":"true"}""", 400, "stream", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","stream_options":{"include_usage":true}}""", 400, "stream_options", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","stream":true,"stream_options":{"include_usage":1}}""", 400, "stream_options.include_usage", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","ignore_eos":1}""", 400, "ignore_eos", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","user":5}""", 400, "user", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","presence_penalty":0.5}""", 400, "presence_penalty", "unsupported_value" },
        { C, """{"model":"tiny","prompt":"a","presence_penalty":3}""", 400, "presence_penalty", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","frequency_penalty":-1}""", 400, "frequency_penalty", "unsupported_value" },
        { C, """{"model":"tiny","prompt":"a","logit_bias":{"5":10}}""", 400, "logit_bias", "unsupported_value" },
        { C, """{"model":"tiny","prompt":"a","logit_bias":{"5":"x"}}""", 400, "logit_bias.5", "invalid_value" },
        { C, """{"model":"tiny","prompt":"a","best_of":3}""", 400, "best_of", "unsupported_value" },
        { C, """{"model":"tiny","prompt":"a","suffix":"end"}""", 400, "suffix", "unsupported_value" },
        { C, """{"model":"tiny","prompt":"a",""", 400, null, "invalid_json" },
        { C, """{"model":"tiny","prompt":"a"} trailing""", 400, null, "invalid_json" },
        { C, """[1,2]""", 400, null, "invalid_json" },
        { C, """null""", 400, null, "invalid_json" },
        { C, "", 400, null, "invalid_json" },
        { C, "model=tiny&prompt=a", 400, null, "invalid_json" },

        { Chat, """{"model":"tiny"}""", 400, "messages", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[]}""", 400, "messages", "invalid_value" },
        { Chat, """{"model":"tiny","messages":"hi"}""", 400, "messages", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"content":"hi"}]}""", 400, "messages[0].role", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"},{"role":"robot","content":"x"}]}""", 400, "messages[1].role", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user"}]}""", 400, "messages[0].content", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":5}]}""", 400, "messages[0].content", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}""", 400, "messages[0].content", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":[{"type":"text"}]}]}""", 400, "messages[0].content", "invalid_value" },
        { Chat, """{"model":"nope","messages":[{"role":"user","content":"hi"}]}""", 404, "model", "model_not_found" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"top_logprobs":2}""", 400, "top_logprobs", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":21}""", 400, "top_logprobs", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"logprobs":3}""", 400, "logprobs", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":0}""", 400, "max_completion_tokens", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":0}""", 400, "max_tokens", "invalid_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":5000}""", 400, "max_completion_tokens", "context_length_exceeded" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":5000}""", 400, "max_tokens", "context_length_exceeded" },
        { Chat, $$"""{"model":"tiny","messages":[{"role":"user","content":{{LongText}}}]}""", 413, "messages", "context_length_exceeded" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}""", 400, "tools", "unsupported_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"tool_choice":"auto"}""", 400, "tool_choice", "unsupported_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}""", 400, "response_format", "unsupported_value" },
        { Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi"}],"n":2,"stream":false,"stream_options":{}}""", 400, "stream_options", "invalid_value" },
        { Chat, "{", 400, null, "invalid_json" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Invalid_requests_get_an_OpenAI_error_naming_the_field(string path, string body, int status, string? param, string? code)
    {
        var (actualStatus, response) = await server.PostAsync(path, body);
        Assert.True(status == actualStatus, $"expected {status}, got {actualStatus}: {response?.ToJsonString()}");
        var error = Http.Error(response);
        Assert.Equal(param, (string?)error["param"]);
        Assert.Equal(code, (string?)error["code"]);
        Assert.Equal(status >= 500 ? "server_error" : status == 429 ? "rate_limit_error" : "invalid_request_error", (string?)error["type"]);
        if (param is not null) Assert.Contains(param.Split('[', '.')[0], (string?)error["message"]);
    }

    [Theory]
    [InlineData(C, """{"model":"tiny","prompt":"a","max_tokens":2,"frobnicate":{"deep":[1]},"metadata":{"k":"v"},"store":true,"stream_options":null}""")]
    [InlineData(Chat, """{"model":"tiny","messages":[{"role":"user","content":"hi","refusal":null}],"max_tokens":2,"parallel_tool_calls":false,"service_tier":"auto","presence_penalty":0,"frequency_penalty":0,"logit_bias":{},"tools":[],"tool_choice":"none","response_format":{"type":"text"}}""")]
    public async Task Unknown_fields_and_neutral_values_of_unsupported_fields_are_accepted(string path, string body)
    {
        var (status, response) = await server.PostAsync(path, body);
        Assert.True(status == 200, response?.ToJsonString());
    }

    [Fact]
    public async Task Base_model_prefixed_adapter_names_and_best_of_equal_to_n_are_understood()
    {
        var (status, _) = await server.PostAsync(C, """{"model":"tiny","prompt":"a","max_tokens":1,"n":2,"best_of":2}""");
        Assert.Equal(200, status);
    }

    [Fact]
    public async Task Unknown_paths_and_wrong_methods_get_OpenAI_errors()
    {
        var (status, body) = await Http.GetAsync(server.Client, "/v1/nothing-here");
        Assert.Equal(404, status);
        Assert.Equal("not_found", (string?)Http.Error(body)["code"]);

        (status, body) = await Http.GetAsync(server.Client, "/v1/completions");
        Assert.Equal(405, status);
        Assert.Equal("method_not_allowed", (string?)Http.Error(body)["code"]);
    }

    [Fact]
    public async Task The_body_is_read_as_JSON_whatever_its_content_type()
    {
        using var content = new ByteArrayContent(Encoding.UTF8.GetBytes("""{"model":"tiny","prompt":"a","max_tokens":1}"""));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/x-www-form-urlencoded");
        using var response = await server.Client.PostAsync(C, content, TestContext.Current.CancellationToken);
        Assert.Equal(200, (int)response.StatusCode);
    }
}
