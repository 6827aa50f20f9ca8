using System.Text.Json.Nodes;
using AdapterServe.Engine;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.Server;

/// <summary>Behaviour that needs a particular model: one that reaches end-of-sequence, one without a chat template.</summary>
[Collection(RealServerCollection.Name)]
public sealed class ModelBehaviourTests(RealServer server)
{
    [Fact]
    public async Task Ignore_eos_keeps_generating_past_the_end_of_sequence_token()
    {
        // Find a prompt whose greedy continuation reaches an end-of-sequence token, asking the engine directly.
        const int maxTokens = 12;
        var sampling = DirectEngine.Greedy(maxTokens) with { IgnoreEos = false };
        int[]? found = null;
        for (int start = 3; start < TinyModel.Config.VocabSize && found is null; start += 32)
        {
            var prompts = Enumerable.Range(start, Math.Min(32, TinyModel.Config.VocabSize - start)).Select(i => new[] { i }).ToList();
            var runs = await Task.WhenAll(prompts.Select(p => DirectEngine.RunAsync(server.Engine, p, sampling)));
            int hit = Array.FindIndex(runs, r => r[0].Reason == FinishReason.Stop);
            if (hit >= 0) found = prompts[hit];
        }
        if (found is null) Assert.Skip("No single-token prompt of the tiny model reaches end-of-sequence greedily within 12 tokens.");

        string Request(bool ignoreEos) => $$"""{"model":"tiny","prompt":[{{found![0]}}],"max_tokens":{{maxTokens}},"temperature":0,"ignore_eos":{{(ignoreEos ? "true" : "false")}}}""";
        var (_, stopped) = await server.PostAsync("/v1/completions", Request(false));
        Assert.Equal("stop", (string?)stopped!["choices"]![0]!["finish_reason"]);
        Assert.True((int)stopped["usage"]!["completion_tokens"]! < maxTokens);
        var (_, kept) = await server.PostAsync("/v1/completions", Request(true));
        Assert.Equal("length", (string?)kept!["choices"]![0]!["finish_reason"]);
        Assert.Equal(maxTokens, (int)kept["usage"]!["completion_tokens"]!);
        Assert.StartsWith((string)stopped["choices"]![0]!["text"]!, (string?)kept["choices"]![0]!["text"]);
    }

    [Fact]
    public async Task A_chat_template_the_tokenizer_cannot_render_answers_chat_with_400_on_messages()
    {
        string dir = TinyModel.Write("odd-template");
        string config = Path.Combine(dir, "tokenizer_config.json");
        var json = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
        json["chat_template"] = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}";   // no built-in family
        File.WriteAllText(config, json.ToJsonString());

        await using var factory = new ServerFactory(TinyModel.Settings(dir));
        var client = factory.CreateClient();
        await TinyModel.WaitUntilReadyAsync(factory.Services.GetRequiredService<IGenerationEngine>());
        var (status, body) = await Http.PostAsync(client, "/v1/chat/completions", """{"model":"tiny","messages":[{"role":"user","content":"hi"}]}""");
        Assert.Equal(400, status);
        var error = Http.Error(body);
        Assert.Equal("messages", (string?)error["param"]);
        Assert.Equal("chat_template_error", (string?)error["code"]);
        (status, _) = await Http.PostAsync(client, "/v1/completions", """{"model":"tiny","prompt":"hi","max_tokens":1}""");
        Assert.Equal(200, status);
    }
}
