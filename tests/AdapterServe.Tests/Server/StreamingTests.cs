using System.Text;
using System.Text.Json.Nodes;

namespace AdapterServe.Tests.Server;

/// <summary>Server-Sent Events on the real engine, read with <see cref="System.Net.ServerSentEvents.SseParser"/>; each stream is compared with the same request unstreamed.</summary>
[Collection(RealServerCollection.Name)]
public sealed class StreamingTests(RealServer server)
{
    private static string Streamed(string json, string options = "") => json.TrimEnd('}') + ",\"stream\":true" + options + "}";

    [Fact]
    public async Task Completion_stream_concatenates_to_the_unstreamed_answer()
    {
        const string request = """{"model":"tiny","prompt":["Once upon","A dog"],"n":2,"max_tokens":10,"temperature":0,"ignore_eos":true}""";
        var (_, whole) = await server.PostAsync("/v1/completions", request);
        var (status, contentType, data) = await Http.StreamAsync(server.Client, "/v1/completions", Streamed(request));
        Assert.Equal(200, status);
        Assert.Equal("text/event-stream", contentType);
        var chunks = Http.Chunks(data);

        var text = new Dictionary<int, StringBuilder>();
        var finish = new Dictionary<int, string>();
        string id = (string)chunks[0]["id"]!;
        foreach (var chunk in chunks)
        {
            Assert.Equal(id, (string?)chunk["id"]);
            Assert.Equal("text_completion", (string?)chunk["object"]);
            Assert.Equal("tiny", (string?)chunk["model"]);
            Assert.False(chunk.AsObject().ContainsKey("usage"));
            var choice = Assert.Single(chunk["choices"]!.AsArray())!;
            int index = (int)choice["index"]!;
            Assert.False(finish.ContainsKey(index), "no chunk of a choice after its finish_reason");
            text.TryAdd(index, new StringBuilder());
            text[index].Append((string?)choice["text"]);
            if ((string?)choice["finish_reason"] is { } reason) finish[index] = reason;
        }
        var expected = whole!["choices"]!.AsArray();
        Assert.Equal(expected.Count, text.Count);
        foreach (var choice in expected)
        {
            int index = (int)choice!["index"]!;
            Assert.Equal((string?)choice["text"], text[index].ToString());
            Assert.Equal((string?)choice["finish_reason"], finish[index]);
        }
        Assert.True(chunks.Count > expected.Count, "one chunk per token, not one per choice");
    }

    [Fact]
    public async Task Include_usage_adds_one_last_chunk_with_no_choices_and_the_usage()
    {
        const string request = """{"model":"tiny","prompt":"Hi","n":2,"max_tokens":5,"temperature":0,"ignore_eos":true}""";
        var (_, whole) = await server.PostAsync("/v1/completions", request);
        var (_, _, data) = await Http.StreamAsync(server.Client, "/v1/completions", Streamed(request, ",\"stream_options\":{\"include_usage\":true}"));
        var chunks = Http.Chunks(data);
        var last = chunks[^1];
        Assert.Empty(last["choices"]!.AsArray());
        Assert.True(JsonNode.DeepEquals(whole!["usage"], last["usage"]), $"{whole["usage"]} vs {last["usage"]}");
        Assert.All(chunks[..^1], c => Assert.NotEmpty(c["choices"]!.AsArray()));
    }

    [Fact]
    public async Task Streamed_echo_and_logprobs_equal_the_unstreamed_ones()
    {
        const string request = """{"model":"tiny","prompt":"The cat","max_tokens":6,"temperature":0,"ignore_eos":true,"echo":true,"logprobs":2}""";
        var (_, whole) = await server.PostAsync("/v1/completions", request);
        var (_, _, data) = await Http.StreamAsync(server.Client, "/v1/completions", Streamed(request));
        var chunks = Http.Chunks(data);
        Assert.Equal("The cat", (string?)chunks[0]["choices"]![0]!["text"]);

        var expected = whole!["choices"]![0]!["logprobs"]!;
        foreach (var field in new[] { "tokens", "token_logprobs", "top_logprobs", "text_offset" })
        {
            var streamed = new JsonArray(chunks
                .Select(c => c["choices"]![0]!["logprobs"])
                .Where(lp => lp is not null)
                .SelectMany(lp => lp![field]!.AsArray().Select(x => x?.DeepClone()))
                .ToArray());
            Assert.True(JsonNode.DeepEquals(expected[field], streamed), $"{field}: {expected[field]} vs {streamed}");
        }
        Assert.Equal((string?)whole["choices"]![0]!["text"], string.Concat(chunks.Select(c => (string?)c["choices"]![0]!["text"])));
    }

    [Fact]
    public async Task Chat_stream_sends_the_role_first_then_content_then_an_empty_delta_with_the_finish_reason()
    {
        const string request = """{"model":"tiny","messages":[{"role":"user","content":"Tell me a story"}],"n":2,"max_completion_tokens":8,"temperature":0,"ignore_eos":true}""";
        var (_, whole) = await server.PostAsync("/v1/chat/completions", request);
        var (status, _, data) = await Http.StreamAsync(server.Client, "/v1/chat/completions", Streamed(request, ",\"stream_options\":{\"include_usage\":true}"));
        Assert.Equal(200, status);
        var chunks = Http.Chunks(data);
        Assert.All(chunks, c => Assert.Equal("chat.completion.chunk", (string?)c["object"]));
        Assert.True(JsonNode.DeepEquals(whole!["usage"], chunks[^1]["usage"]));
        Assert.Empty(chunks[^1]["choices"]!.AsArray());

        for (int index = 0; index < 2; index++)
        {
            var mine = chunks[..^1].Select(c => c["choices"]![0]!).Where(c => (int)c["index"]! == index).ToList();
            Assert.Equal("assistant", (string?)mine[0]["delta"]!["role"]);
            Assert.All(mine.Skip(1), c => Assert.False(c["delta"]!.AsObject().ContainsKey("role")));
            var last = mine[^1];
            Assert.Empty(last["delta"]!.AsObject());
            Assert.Equal((string?)whole["choices"]![index]!["finish_reason"], (string?)last["finish_reason"]);
            Assert.All(mine[..^1], c => Assert.Null(c["finish_reason"]));
            string content = string.Concat(mine.Select(c => (string?)c["delta"]!["content"]));
            Assert.Equal((string?)whole["choices"]![index]!["message"]!["content"], content);
        }
    }

    [Fact]
    public async Task Chat_stream_logprobs_equal_the_unstreamed_ones()
    {
        const string request = """{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":6,"temperature":0,"ignore_eos":true,"logprobs":true,"top_logprobs":2}""";
        var (_, whole) = await server.PostAsync("/v1/chat/completions", request);
        var (_, _, data) = await Http.StreamAsync(server.Client, "/v1/chat/completions", Streamed(request));
        var streamed = new JsonArray(Http.Chunks(data)
            .Select(c => c["choices"]![0]!["logprobs"])
            .Where(lp => lp is not null)
            .SelectMany(lp => lp!["content"]!.AsArray().Select(x => x!.DeepClone()))
            .ToArray());
        Assert.True(JsonNode.DeepEquals(whole!["choices"]![0]!["logprobs"]!["content"], streamed));
    }
}
