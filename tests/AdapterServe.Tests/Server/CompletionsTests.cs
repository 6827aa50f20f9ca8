using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterServe.Engine;

namespace AdapterServe.Tests.Server;

/// <summary><c>POST /v1/completions</c> on the real engine, checked against the engine run directly.</summary>
[Collection(RealServerCollection.Name)]
public sealed class CompletionsTests(RealServer server)
{
    private const string Prompt = "Once upon a time";

    private IReadOnlyList<int> Encode(string text) => server.Engine.Tokenizer.Encode(text);

    private static string Json(string s) => JsonSerializer.Serialize(s);

    [Fact]
    public async Task Greedy_completion_equals_the_engine_run_directly()
    {
        var (status, body) = await server.PostAsync("/v1/completions",
            $$"""{"model":"tiny","prompt":{{Json(Prompt)}},"max_tokens":12,"temperature":0,"ignore_eos":true}""");
        Assert.Equal(200, status);
        var expected = (await DirectEngine.RunAsync(server.Engine, Encode(Prompt), DirectEngine.Greedy(12)))[0];

        Assert.StartsWith("cmpl-", (string?)body!["id"]);
        Assert.Equal("text_completion", (string?)body["object"]);
        Assert.Equal("tiny", (string?)body["model"]);
        Assert.True((long)body["created"]! > 1_700_000_000);
        var choice = Assert.Single(body["choices"]!.AsArray())!;
        Assert.Equal(0, (int)choice["index"]!);
        Assert.Equal(expected.Text, (string?)choice["text"]);
        Assert.Equal("length", (string?)choice["finish_reason"]);
        Assert.Null(choice["logprobs"]);
        Assert.True(choice.AsObject().ContainsKey("logprobs"));
        Assert.Equal(Encode(Prompt).Count, (int)body["usage"]!["prompt_tokens"]!);
        Assert.Equal(12, (int)body["usage"]!["completion_tokens"]!);
        Assert.Equal(Encode(Prompt).Count + 12, (int)body["usage"]!["total_tokens"]!);
    }

    [Fact]
    public async Task Max_tokens_defaults_to_16()
    {
        var (status, body) = await server.PostAsync("/v1/completions", $$"""{"model":"tiny","prompt":"a","temperature":0,"ignore_eos":true}""");
        Assert.Equal(200, status);
        Assert.Equal(16, (int)body!["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task Token_id_prompt_completes_like_the_same_prompt_as_text()
    {
        var ids = Encode("The little dog");
        var (_, asText) = await server.PostAsync("/v1/completions", """{"model":"tiny","prompt":"The little dog","max_tokens":8,"temperature":0}""");
        var (status, asIds) = await server.PostAsync("/v1/completions", $$"""{"model":"tiny","prompt":{{JsonSerializer.Serialize(ids)}},"max_tokens":8,"temperature":0}""");
        Assert.Equal(200, status);
        Assert.Equal((string?)asText!["choices"]![0]!["text"], (string?)asIds!["choices"]![0]!["text"]);
        Assert.Equal(ids.Count, (int)asIds["usage"]!["prompt_tokens"]!);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_list_of_prompts_gives_n_choices_per_prompt_indexed_prompt_major(bool asTokenIds)
    {
        string[] prompts = ["A cat", "The sun was"];
        string promptJson = asTokenIds ? JsonSerializer.Serialize(prompts.Select(Encode)) : JsonSerializer.Serialize(prompts);
        var (status, body) = await server.PostAsync("/v1/completions",
            $$"""{"model":"tiny","prompt":{{promptJson}},"n":2,"max_tokens":6,"temperature":0,"ignore_eos":true}""");
        Assert.Equal(200, status);
        var choices = body!["choices"]!.AsArray();
        Assert.Equal(4, choices.Count);
        for (int p = 0; p < 2; p++)
        {
            var expected = (await DirectEngine.RunAsync(server.Engine, Encode(prompts[p]), DirectEngine.Greedy(6)))[0].Text;
            for (int i = 0; i < 2; i++)
            {
                var choice = choices[p * 2 + i]!;
                Assert.Equal(p * 2 + i, (int)choice["index"]!);
                Assert.Equal(expected, (string?)choice["text"]);
            }
        }
        Assert.Equal(Encode(prompts[0]).Count + Encode(prompts[1]).Count, (int)body["usage"]!["prompt_tokens"]!);
        Assert.Equal(24, (int)body["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task A_stop_string_ends_the_completion_before_it()
    {
        var full = (await DirectEngine.RunAsync(server.Engine, Encode(Prompt), DirectEngine.Greedy(40)))[0].Text;
        // A two-letter piece whose first occurrence is inside the text: the answer must end right before it.
        int cut = Enumerable.Range(3, full.Length - 4).FirstOrDefault(k =>
            char.IsAsciiLetter(full[k]) && char.IsAsciiLetter(full[k + 1]) && full.IndexOf(full.Substring(k, 2), StringComparison.Ordinal) == k);
        Assert.True(cut > 0, $"no two-letter piece to stop at in {JsonSerializer.Serialize(full)}");
        string stop = full.Substring(cut, 2);

        foreach (string stopJson in new[] { Json(stop), $"[\"\\u0001never\",{Json(stop)}]" })
        {
            var (status, body) = await server.PostAsync("/v1/completions",
                $$"""{"model":"tiny","prompt":{{Json(Prompt)}},"max_tokens":40,"temperature":0,"ignore_eos":true,"stop":{{stopJson}}}""");
            Assert.Equal(200, status);
            var choice = body!["choices"]![0]!;
            Assert.Equal(full[..cut], (string?)choice["text"]);
            Assert.Equal("stop", (string?)choice["finish_reason"]);
        }
    }

    [Fact]
    public async Task A_seed_makes_sampling_reproducible_and_the_n_choices_differ()
    {
        string Request(int seed) => $$"""{"model":"tiny","prompt":"Hello","max_tokens":16,"temperature":1.0,"n":3,"seed":{{seed}},"ignore_eos":true}""";
        static List<string> Texts(JsonNode body) => body["choices"]!.AsArray().Select(c => (string)c!["text"]!).ToList();

        var (_, first) = await server.PostAsync("/v1/completions", Request(11));
        var (_, again) = await server.PostAsync("/v1/completions", Request(11));
        var (_, other) = await server.PostAsync("/v1/completions", Request(12));
        Assert.Equal(Texts(first!), Texts(again!));
        Assert.True(Texts(first!).Distinct().Count() > 1, "three sampled choices should not all be equal");
        Assert.NotEqual(Texts(first!), Texts(other!));
    }

    [Theory]
    [InlineData("\"top_k\":1")]
    [InlineData("\"top_p\":0.000001")]
    public async Task Top_k_1_or_a_tiny_top_p_samples_the_greedy_answer(string restriction)
    {
        var greedy = (await DirectEngine.RunAsync(server.Engine, Encode(Prompt), DirectEngine.Greedy(12)))[0].Text;
        var (status, body) = await server.PostAsync("/v1/completions",
            $$"""{"model":"tiny","prompt":{{Json(Prompt)}},"max_tokens":12,"temperature":1.5,"seed":3,"ignore_eos":true,{{restriction}}}""");
        Assert.Equal(200, status);
        Assert.Equal(greedy, (string?)body!["choices"]![0]!["text"]);
    }

    [Fact]
    public async Task Echo_puts_the_prompt_before_the_completion()
    {
        var (_, plain) = await server.PostAsync("/v1/completions", $$"""{"model":"tiny","prompt":{{Json(Prompt)}},"max_tokens":5,"temperature":0}""");
        var (status, echoed) = await server.PostAsync("/v1/completions", $$"""{"model":"tiny","prompt":{{Json(Prompt)}},"max_tokens":5,"temperature":0,"echo":true}""");
        Assert.Equal(200, status);
        Assert.Equal(Prompt + (string?)plain!["choices"]![0]!["text"], (string?)echoed!["choices"]![0]!["text"]);
        Assert.Equal((int)plain["usage"]!["completion_tokens"]!, (int)echoed["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task Logprobs_are_the_engines_and_the_greedy_token_is_the_most_likely_alternative()
    {
        var (status, body) = await server.PostAsync("/v1/completions",
            $$"""{"model":"tiny","prompt":{{Json(Prompt)}},"max_tokens":8,"temperature":0,"ignore_eos":true,"logprobs":3}""");
        Assert.Equal(200, status);
        var expected = (await DirectEngine.RunAsync(server.Engine, Encode(Prompt), DirectEngine.Greedy(8, logprobs: 3)))[0];
        var lp = body!["choices"]![0]!["logprobs"]!;
        var tokens = lp["tokens"]!.AsArray().Select(t => (string)t!).ToList();
        var logprobs = lp["token_logprobs"]!.AsArray().Select(t => (float)t!).ToList();
        var top = lp["top_logprobs"]!.AsArray().Select(t => t!.AsObject()).ToList();
        var offsets = lp["text_offset"]!.AsArray().Select(t => (int)t!).ToList();

        Assert.Equal(8, tokens.Count);
        Assert.Equal(expected.Logprobs.Select(l => l!.Token), tokens);
        Assert.Equal(expected.Logprobs.Select(l => l!.Logprob), logprobs);
        for (int i = 0; i < tokens.Count; i++)
        {
            Assert.InRange(top[i].Count, 1, 4);
            float best = top[i].Max(kv => (float)kv.Value!);
            Assert.Equal(best, logprobs[i]);                                   // greedy picks the argmax
            Assert.Equal(logprobs[i], (float)top[i][tokens[i]]!);
            Assert.Equal(i == 0 ? 0 : offsets[i - 1] + tokens[i - 1].Length, offsets[i]);
            Assert.True(logprobs[i] <= 0);
        }
    }

    [Fact]
    public async Task Echo_with_logprobs_lists_the_prompt_tokens_first_the_very_first_without_logprob()
    {
        var ids = Encode(Prompt);
        var (status, body) = await server.PostAsync("/v1/completions",
            $$"""{"model":"tiny","prompt":{{Json(Prompt)}},"max_tokens":4,"temperature":0,"ignore_eos":true,"logprobs":2,"echo":true}""");
        Assert.Equal(200, status);
        var expected = (await DirectEngine.RunAsync(server.Engine, ids, DirectEngine.Greedy(4, logprobs: 2), promptLogprobs: true))[0];
        var lp = body!["choices"]![0]!["logprobs"]!;
        var tokenLogprobs = lp["token_logprobs"]!.AsArray();
        Assert.Equal(ids.Count + 4, lp["tokens"]!.AsArray().Count);
        Assert.Equal(ids.Count + 4, tokenLogprobs.Count);
        Assert.Equal(ids.Count + 4, lp["text_offset"]!.AsArray().Count);
        Assert.Null(tokenLogprobs[0]);
        Assert.Null(lp["top_logprobs"]![0]);
        Assert.Equal(server.Engine.Tokenizer.TokenText(ids[0]), (string?)lp["tokens"]![0]);
        for (int i = 1; i < ids.Count; i++)
            Assert.Equal(expected.PromptLogprobs![i]!.Logprob, (float)tokenLogprobs[i]!);
        for (int i = 0; i < 4; i++)
            Assert.Equal(expected.Logprobs[i]!.Logprob, (float)tokenLogprobs[ids.Count + i]!);
    }
}
