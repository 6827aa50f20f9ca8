using System.Text.Json.Nodes;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Server;

namespace AdapterServe.Tests.AdapterHttp;

/// <summary>Naming an adapter in <c>model</c>, and <c>/v1/models</c>, through the whole server.</summary>
[Collection(AdapterHttpCollection.Name)]
public sealed class AdapterModelTests(ReferenceServer reference)
{
    private static readonly GreedyRequest Story = new("zara", "Once upon a time", 12);

    [Fact]
    public async Task Adapter_name_and_base_colon_adapter_give_the_adapters_output_alone()
    {
        var zara = TinyAdapters.Lora(seed: 201);
        var expected = await reference.AloneAsync("model-zara", zara, Story);
        var baseOutput = await reference.AloneAsync(null, null, Story);
        Assert.NotEqual(baseOutput.Tokens, expected.Tokens);

        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("zara", zara);
        var (status, body) = await server.PostAsync("/v1/completions", Story.Json());
        Assert.Equal(200, status);
        Assert.Equal("zara", (string?)body!["model"]);
        Completion.FromResponse(body).AssertSameAs(expected, "model = zara");

        (status, body) = await server.PostAsync("/v1/completions", (Story with { Model = "tiny:zara" }).Json());
        Assert.Equal(200, status);
        Assert.Equal("tiny:zara", (string?)body!["model"]);
        Completion.FromResponse(body).AssertSameAs(expected, "model = tiny:zara");

        (await server.CompleteAsync(Story with { Model = "tiny" })).AssertSameAs(baseOutput, "model = tiny (the base)");
    }

    [Fact]
    public async Task Unknown_adapter_in_model_is_404_model_not_found_never_the_base()
    {
        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("zara", TinyAdapters.Lora(seed: 201));
        foreach (var model in new[] { "nobody", "tiny:nobody", "zara:tiny", "Zara" })
        {
            var (status, body) = await server.PostAsync("/v1/completions", (Story with { Model = model }).Json());
            Assert.Equal(404, status);
            var error = Http.Error(body);
            Assert.Equal("model_not_found", (string?)error["code"]);
            Assert.Equal("model", (string?)error["param"]);
            Assert.Contains(model, (string?)error["message"]);
        }
        // A streamed chat request is refused the same way, before any event is sent.
        var (streamStatus, streamBody) = await server.PostAsync("/v1/chat/completions",
            """{"model":"nobody","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"stream":true}""");
        Assert.Equal(404, streamStatus);
        Assert.Equal("model_not_found", (string?)Http.Error(streamBody)["code"]);
    }

    [Fact]
    public async Task Models_list_adapters_with_the_base_as_parent_until_they_are_deleted()
    {
        var zara = TinyAdapters.Lora(seed: 201);
        var forest = TinyAdapters.Lora(seed: 202);
        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("zara", zara);
        await server.UploadOkAsync("forest", forest);

        var (status, models) = await server.GetAsync("/v1/models");
        Assert.Equal(200, status);
        var cards = models!["data"]!.AsArray().Select(c => c!.AsObject()).ToList();
        Assert.Equal(["tiny", "forest", "zara"], cards.Select(c => (string?)c["id"]));
        Assert.Null(cards[0]["parent"]);
        foreach (var card in cards.Skip(1))
        {
            Assert.Equal("tiny", (string?)card["parent"]);
            Assert.Equal("tiny", (string?)card["root"]);
            Assert.Equal("model", (string?)card["object"]);
        }

        (await server.CompleteAsync(Story)).AssertSameAs(await reference.AloneAsync("model-zara", zara, Story), "zara before the delete");
        var (deleted, body) = await server.DeleteAsync("zara");
        Assert.Equal(200, deleted);
        Assert.True((bool)body!["deleted"]!);

        (_, models) = await server.GetAsync("/v1/models");
        Assert.Equal(["tiny", "forest"], models!["data"]!.AsArray().Select(c => (string?)c!["id"]));
        foreach (var model in new[] { "zara", "tiny:zara" })
        {
            var (after, error) = await server.PostAsync("/v1/completions", (Story with { Model = model }).Json());
            Assert.Equal(404, after);
            Assert.Equal("model_not_found", (string?)Http.Error(error)["code"]);
        }
        // The other adapter is untouched.
        (await server.CompleteAsync(Story with { Model = "forest" })).AssertSameAs(await reference.AloneAsync("model-forest", forest, Story with { Model = "forest" }), "forest after zara's delete");
        Assert.Equal(404, (await server.GetAsync("/v1/adapters/zara")).Status);
    }

    [Fact]
    public async Task Stored_adapters_are_served_again_after_a_restart_on_the_same_data_directory()
    {
        var zara = TinyAdapters.Lora(seed: 201);
        var expected = await reference.AloneAsync("model-zara", zara, Story);
        await using var first = await AdapterServer.StartAsync();
        await first.UploadOkAsync("zara", zara);

        await using var second = await AdapterServer.StartAsync(new Dictionary<string, string?> { ["Adapters:DataDirectory"] = first.DataDirectory });
        var (_, models) = await second.GetAsync("/v1/models");
        Assert.Contains("zara", models!["data"]!.AsArray().Select(c => (string?)c!["id"]));
        (await second.CompleteAsync(Story)).AssertSameAs(expected, "zara after a restart");
    }
}
