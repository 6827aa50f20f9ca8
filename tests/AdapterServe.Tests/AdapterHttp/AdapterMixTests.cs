using AdapterServe.Tests.Server;

namespace AdapterServe.Tests.AdapterHttp;

/// <summary>
/// The per-request extension <c>adapters: [{"name","scale"}]</c> through the whole server. The reference for a mix is
/// one plain LoRA built in the test with the weighted sum of the adapters' updates (<see cref="TinyAdapters.WeightedSum"/>).
/// </summary>
[Collection(AdapterHttpCollection.Name)]
public sealed class AdapterMixTests(ReferenceServer reference)
{
    private static readonly GreedyRequest Story = new("tiny", "Once upon a time", 12);
    private const string Mix = """[{"name":"a","scale":0.7},{"name":"b","scale":0.3}]""";

    [Fact]
    public async Task Two_adapters_with_scales_give_the_output_of_their_weighted_sum_and_differ_from_either_alone()
    {
        var a = TinyAdapters.Lora(seed: 301);
        var b = TinyAdapters.Lora(seed: 302, r: 2);
        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("a", a);
        await server.UploadOkAsync("b", b);

        var mixed = await server.CompleteAsync(Story with { Adapters = Mix });
        mixed.AssertSameAs(await reference.AloneAsync("mix-0.7a-0.3b", TinyAdapters.WeightedSum((a, 0.7f), (b, 0.3f)), Story), "0.7·a + 0.3·b");
        Assert.NotEqual((await reference.AloneAsync("mix-a", a, Story)).Tokens, mixed.Tokens);
        Assert.NotEqual((await reference.AloneAsync("mix-b", b, Story)).Tokens, mixed.Tokens);
        Assert.NotEqual((await reference.AloneAsync(null, null, Story)).Tokens, mixed.Tokens);

        // 'model' names an adapter at scale 1; 'adapters' adds more. Streamed, the same answer.
        var withModel = Story with { Model = "a", Adapters = """[{"name":"b","scale":0.3}]""" };
        var expected = await reference.AloneAsync("mix-a-0.3b", TinyAdapters.WeightedSum((a, 1f), (b, 0.3f)), Story);
        (await server.CompleteAsync(withModel)).AssertSameAs(expected, "model a + 0.3·b");
        (await server.StreamAsync(withModel)).AssertSameAs(expected, "model a + 0.3·b, streamed");
    }

    [Fact]
    public async Task Unknown_adapter_in_the_extension_is_404_naming_it()
    {
        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("a", TinyAdapters.Lora(seed: 301));
        var (status, body) = await server.PostAsync("/v1/completions", (Story with { Adapters = """[{"name":"a","scale":0.7},{"name":"ghost","scale":0.3}]""" }).Json());
        Assert.Equal(404, status);
        var error = Http.Error(body);
        Assert.Equal("model_not_found", (string?)error["code"]);
        Assert.Equal("adapters", (string?)error["param"]);
        Assert.Contains("'ghost'", (string?)error["message"]);
        // Nothing was left holding 'a'.
        var (_, info) = await server.GetAsync("/v1/adapters/a");
        Assert.Equal(0, (int)info!["active_sequences"]!);
    }

    [Fact]
    public async Task Bad_adapter_entries_are_400_naming_the_field()
    {
        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("a", TinyAdapters.Lora(seed: 301));
        (string Adapters, string Param)[] cases =
        [
            ("""[{"name":"a","scale":"0.7"}]""", "adapters[0].scale"),     // not a number
            ("""[{"name":"a","scale":1e400}]""", "adapters[0].scale"),     // not a finite double
            ("""[{"name":"a","scale":1e39}]""", "adapters[0].scale"),      // a finite double that no float (the engine's type) holds
            ("""[{"name":"a","scale":-1e39}]""", "adapters[0].scale"),
            ("""[{"name":"a"},{"scale":0.5}]""", "adapters[1].name"),      // no name
            ("""[{"name":"","scale":0.5}]""", "adapters[0].name"),
            ("""[null]""", "adapters[0]"),
        ];
        foreach (var (adapters, param) in cases)
        {
            string json = (Story with { Adapters = adapters }).Json();
            var (status, body) = await server.PostAsync("/v1/completions", json);
            Assert.True(status == 400, $"{json} → {status} {body?.ToJsonString()}");
            var error = Http.Error(body);
            Assert.Equal(param, (string?)error["param"]);
            Assert.Equal("invalid_request_error", (string?)error["type"]);
        }
        var (_, info) = await server.GetAsync("/v1/adapters/a");
        Assert.Equal(0, (int)info!["active_sequences"]!);
    }

    [Fact]
    public async Task The_same_adapter_twice_is_400()
    {
        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("a", TinyAdapters.Lora(seed: 301));
        var (status, body) = await server.PostAsync("/v1/completions", (Story with { Model = "a", Adapters = """[{"name":"a","scale":0.5}]""" }).Json());
        Assert.Equal(400, status);
        Assert.Equal("adapters[0].name", (string?)Http.Error(body)["param"]);
    }
}
