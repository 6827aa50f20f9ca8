using AdapterServe.Engine;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.AdapterServing;

public class RealAdapterServingTests
{
    [Fact]
    public async Task Zara_forest_and_base_in_one_concurrent_batch_tell_their_own_stories()
    {
        string model = SharedModels.Require("stories260K-hf");
        await using var f = await AdapterEngineFixture.StartAsync(model);
        await f.RegisterAsync("zara", SharedModels.Require("adapters/zara"));
        await f.RegisterAsync("forest", SharedModels.Require("adapters/forest"));
        var prompt = f.Engine.Tokenizer.Encode("Once upon a time");
        GenerationRequest Req(string? adapter) => EngineRunner.Greedy(prompt, 48) with
        {
            Sampling = new SamplingParams { Temperature = 0, MaxTokens = 48 },
            Adapters = adapter is null ? [] : [new AdapterRef(adapter)],
        };
        var results = await Task.WhenAll(EngineRunner.RunAsync(f.Engine, Req(null)), EngineRunner.RunAsync(f.Engine, Req("zara")), EngineRunner.RunAsync(f.Engine, Req("forest")));
        string baseText = results[0][0].Text, zara = results[1][0].Text, forest = results[2][0].Text;
        TestContext.Current.SendDiagnosticMessage($"base: {baseText}\nzara: {zara}\nforest: {forest}");
        Assert.Contains("Lily", baseText);
        Assert.Contains("park", baseText);
        Assert.Contains("Zara", zara);
        Assert.DoesNotContain("Lily", zara);
        Assert.Contains("forest", forest);
    }
}
