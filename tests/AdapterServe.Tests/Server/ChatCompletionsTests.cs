using System.Text;
using AdapterServe.Modeling.Tokenization;

namespace AdapterServe.Tests.Server;

/// <summary><c>POST /v1/chat/completions</c> on the real engine: the answer is the engine's continuation of the model's chat template.</summary>
[Collection(RealServerCollection.Name)]
public sealed class ChatCompletionsTests(RealServer server)
{
    [Fact]
    public async Task Chat_answer_equals_the_engine_continuing_the_rendered_chat_template()
    {
        var messages = new List<ChatMessage> { new("system", "You are kind."), new("user", "Tell me a story") };
        var (status, body) = await server.PostAsync("/v1/chat/completions", """
            {"model":"tiny","messages":[{"role":"system","content":"You are kind."},{"role":"user","content":"Tell me a story"}],
             "max_completion_tokens":10,"temperature":0,"ignore_eos":true}
            """);
        Assert.Equal(200, status);
        var tokenizer = server.Engine.Tokenizer;
        var ids = tokenizer.Encode(tokenizer.ApplyChatTemplate(messages), addSpecialTokens: false);
        var expected = (await DirectEngine.RunAsync(server.Engine, ids, DirectEngine.Greedy(10)))[0];

        Assert.StartsWith("chatcmpl-", (string?)body!["id"]);
        Assert.Equal("chat.completion", (string?)body["object"]);
        Assert.Equal("tiny", (string?)body["model"]);
        var choice = Assert.Single(body["choices"]!.AsArray())!;
        Assert.Equal("assistant", (string?)choice["message"]!["role"]);
        Assert.Equal(expected.Text, (string?)choice["message"]!["content"]);
        Assert.Equal("length", (string?)choice["finish_reason"]);
        Assert.Null(choice["logprobs"]);
        Assert.Equal(ids.Count, (int)body["usage"]!["prompt_tokens"]!);
        Assert.Equal(10, (int)body["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task Developer_messages_and_text_parts_render_like_system_messages_and_plain_strings()
    {
        var (_, plain) = await server.PostAsync("/v1/chat/completions", """
            {"model":"tiny","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Tell me a story"}],"max_tokens":6,"temperature":0,"ignore_eos":true}
            """);
        var (status, variant) = await server.PostAsync("/v1/chat/completions", """
            {"model":"tiny","messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Tell me "},{"type":"text","text":"a story"}]}],"max_tokens":6,"temperature":0,"ignore_eos":true}
            """);
        Assert.Equal(200, status);
        Assert.Equal((string?)plain!["choices"]![0]!["message"]!["content"], (string?)variant!["choices"]![0]!["message"]!["content"]);
        Assert.Equal((int)plain["usage"]!["prompt_tokens"]!, (int)variant["usage"]!["prompt_tokens"]!);
    }

    [Fact]
    public async Task Max_completion_tokens_wins_over_max_tokens()
    {
        var (status, body) = await server.PostAsync("/v1/chat/completions",
            """{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_completion_tokens":3,"max_tokens":7,"temperature":0,"ignore_eos":true}""");
        Assert.Equal(200, status);
        Assert.Equal(3, (int)body!["usage"]!["completion_tokens"]!);
        (status, body) = await server.PostAsync("/v1/chat/completions",
            """{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":7,"temperature":0,"ignore_eos":true}""");
        Assert.Equal(7, (int)body!["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task Chat_logprobs_carry_bytes_and_top_alternatives_with_the_greedy_token_most_likely()
    {
        var (status, body) = await server.PostAsync("/v1/chat/completions",
            """{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"temperature":0,"ignore_eos":true,"logprobs":true,"top_logprobs":3}""");
        Assert.Equal(200, status);
        var content = body!["choices"]![0]!["logprobs"]!["content"]!.AsArray();
        Assert.Equal(5, content.Count);
        foreach (var entry in content)
        {
            string token = (string)entry!["token"]!;
            Assert.Equal(Encoding.UTF8.GetBytes(token).Select(b => (int)b), entry["bytes"]!.AsArray().Select(b => (int)b!));
            var top = entry["top_logprobs"]!.AsArray();
            Assert.Equal(3, top.Count);
            Assert.Equal((float)top[0]!["logprob"]!, (float)entry["logprob"]!);
            Assert.True((float)top[0]!["logprob"]! >= (float)top[1]!["logprob"]! && (float)top[1]!["logprob"]! >= (float)top[2]!["logprob"]!);
            Assert.All(top, t => Assert.Equal(Encoding.UTF8.GetBytes((string)t!["token"]!).Length, t!["bytes"]!.AsArray().Count));
        }

        (_, body) = await server.PostAsync("/v1/chat/completions",
            """{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"temperature":0,"logprobs":true}""");
        Assert.All(body!["choices"]![0]!["logprobs"]!["content"]!.AsArray(), e => Assert.Empty(e!["top_logprobs"]!.AsArray()));
    }

    [Fact]
    public async Task N_greedy_chat_choices_are_indexed_and_equal()
    {
        var (status, body) = await server.PostAsync("/v1/chat/completions",
            """{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"n":3,"max_tokens":4,"temperature":0,"ignore_eos":true}""");
        Assert.Equal(200, status);
        var choices = body!["choices"]!.AsArray();
        Assert.Equal([0, 1, 2], choices.Select(c => (int)c!["index"]!));
        Assert.Single(choices.Select(c => (string?)c!["message"]!["content"]).Distinct());
        Assert.Equal(12, (int)body["usage"]!["completion_tokens"]!);
    }
}
