using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Server;

namespace AdapterServe.Tests.AdapterHttp;

/// <summary>The base and three adapters of different kinds in one concurrent streamed batch, through the whole server.</summary>
[Collection(AdapterHttpCollection.Name)]
public sealed class MixedBatchHttpTests(ReferenceServer reference)
{
    private static TestAdapter Rslora(int seed)
    {
        var a = TestAdapter.Lora(r: 2, alpha: 3, projections: [Projection.Q, Projection.V, Projection.Down], seed: seed, baseModel: TinyModel.Config);
        a.Config["use_rslora"] = true;
        return a;
    }

    private static TestAdapter Dora(int seed)
    {
        var a = TestAdapter.Lora(r: 2, alpha: 4, projections: [Projection.O, Projection.Up], seed: seed, baseModel: TinyModel.Config);
        a.Config["use_dora"] = true;
        var random = new Random(seed);
        for (int layer = 0; layer < TinyModel.Config.NumHiddenLayers; layer++)
            foreach (var p in new[] { Projection.O, Projection.Up })
            {
                var (_, dOut) = TinyModel.Config.ProjectionShape(p);
                a.Tensors.Add(new TestTensor($"{TestAdapter.Prefix(layer, p)}.lora_magnitude_vector", [dOut],
                    Enumerable.Range(0, dOut).Select(_ => (float)(0.5 + random.NextDouble())).ToArray()));
            }
        return a;
    }

    [Fact]
    public async Task Streamed_batch_of_the_base_and_three_adapters_gives_every_request_its_output_alone()
    {
        var adapters = new Dictionary<string, TestAdapter>
        {
            ["batch-lora"] = TinyAdapters.Lora(seed: 601),
            ["batch-rslora"] = Rslora(602),
            ["batch-dora"] = Dora(603),
        };
        string?[] models = [null, "batch-lora", "batch-rslora", "batch-dora", "batch-lora", null, "batch-dora", "batch-rslora"];
        string[] prompts = ["Once upon a time", "The cat sat", "In the forest", "A dog", "Hello there", "One day", "The sun was", "She said"];
        GreedyRequest Request(int i) => new(models[i] ?? AdapterServer.Base, prompts[i], 16);

        var alone = new List<Completion>();
        for (int i = 0; i < models.Length; i++)
            alone.Add(await reference.AloneAsync(models[i], models[i] is { } m ? adapters[m] : null, Request(i)));
        foreach (var (name, _) in adapters)     // each adapter changes the output of its prompts
            for (int i = 0; i < models.Length; i++)
                if (models[i] == name)
                    Assert.NotEqual((await reference.AloneAsync(null, null, Request(i) with { Model = AdapterServer.Base })).Tokens, alone[i].Tokens);

        await using var server = await AdapterServer.StartAsync();
        foreach (var (name, adapter) in adapters) await server.UploadOkAsync(name, adapter);
        // Loaded once beforehand, so that the batch below forms at once instead of waiting on first loads.
        foreach (var name in adapters.Keys) await server.CompleteAsync(new GreedyRequest(name, "x", 1));

        var together = await Task.WhenAll(Enumerable.Range(0, models.Length).Select(i => server.StreamAsync(Request(i))));
        for (int i = 0; i < models.Length; i++)
            together[i].AssertSameAs(alone[i], $"request {i} on {models[i] ?? "the base"}");
    }
}
