using AdapterServe.Engine;
using AdapterServe.Server.Generation;
using AdapterServe.Server.OpenAI;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.Server;

/// <summary><c>GET /v1/models</c> and the bearer keys, on the real engine.</summary>
[Collection(RealServerCollection.Name)]
public sealed class ModelsAndAuthTests(RealServer server)
{
    private sealed class ExtraCards : IModelCardSource
    {
        public IEnumerable<ModelCard> ModelCards(ModelInfo baseModel) =>
            [new ModelCard("zara", "model", 1, "adapterserve", baseModel.Id, baseModel.Id)];
    }

    [Fact]
    public async Task Models_list_the_base_model_with_its_context_length()
    {
        var (status, body) = await Http.GetAsync(server.Client, "/v1/models");
        Assert.Equal(200, status);
        Assert.Equal("list", (string?)body!["object"]);
        var card = Assert.Single(body["data"]!.AsArray())!;
        Assert.Equal("tiny", (string?)card["id"]);
        Assert.Equal("model", (string?)card["object"]);
        Assert.Equal("adapterserve", (string?)card["owned_by"]);
        Assert.Equal("tiny", (string?)card["root"]);
        Assert.Null(card["parent"]);
        Assert.True(card.AsObject().ContainsKey("parent"));
        Assert.Equal(server.Engine.Model.CreatedUnixSeconds, (long)card["created"]!);
        Assert.Equal(TinyModel.ContextLength, (int)card["max_model_len"]!);
    }

    [Fact]
    public async Task Registered_card_sources_follow_the_base_model()
    {
        await using var factory = new ServerFactory(TinyModel.Settings(), services: s => s.AddSingleton<IModelCardSource, ExtraCards>());
        var client = factory.CreateClient();
        await TinyModel.WaitUntilReadyAsync(factory.Services.GetRequiredService<IGenerationEngine>());
        var (status, body) = await Http.GetAsync(client, "/v1/models");
        Assert.Equal(200, status);
        var ids = body!["data"]!.AsArray().Select(c => (string?)c!["id"]).ToList();
        Assert.Equal(["tiny", "zara"], ids);
        Assert.Equal("tiny", (string?)body["data"]![1]!["parent"]);
    }

    [Fact]
    public async Task Keys_guard_v1_only_and_any_configured_key_opens_it()
    {
        var settings = TinyModel.Settings();
        settings["Server:ApiKeys:0"] = "key-one, key-two";
        settings["Server:ApiKeys:1"] = "key-three";
        await using var factory = new ServerFactory(settings);
        var client = factory.CreateClient();
        await TinyModel.WaitUntilReadyAsync(factory.Services.GetRequiredService<IGenerationEngine>());
        const string completion = """{"model":"tiny","prompt":"a","max_tokens":1}""";

        var (status, body) = await Http.PostAsync(client, "/v1/completions", completion);
        Assert.Equal(401, status);
        Assert.Equal("invalid_api_key", (string?)Http.Error(body)["code"]);
        (status, body) = await Http.PostAsync(client, "/v1/completions", completion, apiKey: "key-on");
        Assert.Equal(401, status);
        Assert.Equal("invalid_api_key", (string?)Http.Error(body)["code"]);
        (status, _) = await Http.GetAsync(client, "/v1/models", apiKey: "key-one, key-two");
        Assert.Equal(401, status);

        foreach (var key in new[] { "key-one", "key-two", "key-three" })
        {
            (status, _) = await Http.PostAsync(client, "/v1/completions", completion, apiKey: key);
            Assert.Equal(200, status);
            (status, _) = await Http.GetAsync(client, "/v1/models", apiKey: key);
            Assert.Equal(200, status);
        }

        using var missing = await client.GetAsync("/v1/models", TestContext.Current.CancellationToken);
        Assert.Equal("Bearer", missing.Headers.WwwAuthenticate.Single().Scheme);
        Assert.Equal(200, (await Http.GetAsync(client, "/health")).Status);
        using var metrics = await client.GetAsync("/metrics", TestContext.Current.CancellationToken);
        Assert.Equal(200, (int)metrics.StatusCode);
    }
}
