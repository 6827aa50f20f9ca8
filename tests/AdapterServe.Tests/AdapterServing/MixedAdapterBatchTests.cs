using System.Text.Json.Nodes;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterServing;

public class MixedAdapterBatchTests
{
    private static readonly ModelConfig Base = TinyModels.Llama;
    private static string ModelDir => TinyModels.Directory(Base);

    private static TestAdapter AllProjections(int seed, int r = 4) => TestAdapter.Lora(r: r, alpha: 2 * r, projections: ProjectionNames.All, seed: seed, baseModel: Base);

    private static TestAdapter Rslora(int seed)
    {
        var a = TestAdapter.Lora(r: 2, alpha: 3, projections: [Projection.Q, Projection.V, Projection.Down], seed: seed, baseModel: Base);
        a.Config["use_rslora"] = true;
        return a;
    }

    private static TestAdapter Dora(int seed)
    {
        var a = TestAdapter.Lora(r: 2, alpha: 4, projections: [Projection.O, Projection.Up], seed: seed, baseModel: Base);
        a.Config["use_dora"] = true;
        var random = new Random(seed);
        for (int layer = 0; layer < Base.NumHiddenLayers; layer++)
            foreach (var p in new[] { Projection.O, Projection.Up })
            {
                var (_, dOut) = Base.ProjectionShape(p);
                a.Tensors.Add(new TestTensor($"{TestAdapter.Prefix(layer, p)}.lora_magnitude_vector", [dOut], Enumerable.Range(0, dOut).Select(_ => (float)(0.5 + random.NextDouble())).ToArray()));
            }
        return a;
    }

    /// <summary>ΔW per module, materialised in the test from the adapter's own tensors: <c>y + x·(s·B·A)ᵀ</c>.</summary>
    private static Func<string, Tensor, Tensor, Tensor> Merged(TestAdapter adapter)
    {
        double alpha = adapter.Config["lora_alpha"]!.GetValue<double>();
        bool rs = adapter.Config["use_rslora"]?.GetValue<bool>() ?? false;
        bool dora = adapter.Config["use_dora"]?.GetValue<bool>() ?? false;
        Tensor T(string name) { var t = adapter.Tensors.Single(x => x.Name == name); return tensor(t.Values, t.Shape).to_type(ScalarType.Float64); }
        return (module, x, y) =>
        {
            string prefix = "base_model.model." + module;
            if (!adapter.Tensors.Any(t => t.Name == prefix + ".lora_A.weight")) return y;
            var a = T(prefix + ".lora_A.weight");
            var b = T(prefix + ".lora_B.weight");
            double r = a.shape[0], s = rs ? alpha / Math.Sqrt(r) : alpha / r;
            var delta = s * b.matmul(a);                                         // [d_out, d_in]
            if (dora) throw new InvalidOperationException("DoRA is compared alone-vs-batched, not against this merge");
            return y + x.matmul(delta.t());
        };
    }

    [Fact]
    public async Task Adapter_greedy_logits_equal_the_naive_model_with_merged_weights()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        var adapters = new[] { AllProjections(11), Rslora(12) };
        for (int i = 0; i < adapters.Length; i++) await f.RegisterAsync($"a{i}", adapters[i].WriteTo(tmp.Sub($"a{i}")));
        using var naive = new NaiveLlama(ModelDir);
        int[] prompt = [5, 6, 7, 8];
        for (int i = 0; i < adapters.Length; i++)
        {
            var req = EngineRunner.Greedy(prompt, 5, logprobs: 0) with { Adapters = [new AdapterRef($"a{i}")] };
            var result = (await EngineRunner.RunAsync(f.Engine, req))[0];
            var seq = prompt.ToList();
            var merged = Merged(adapters[i]);
            foreach (var (token, lp) in result.Tokens.Zip(result.Logprobs))
            {
                var expected = naive.Logits(seq, merged)[-1].log_softmax(-1);
                Assert.Equal((int)expected.argmax().item<long>(), token);
                Assert.Equal(expected[token].item<double>(), lp!.Logprob, 1e-5);
                seq.Add(token);
            }
        }
    }

    [Fact]
    public async Task Batch_mixing_the_base_and_three_adapters_gives_every_sequence_what_it_gets_alone()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        await f.RegisterAsync("lora", AllProjections(21).WriteTo(tmp.Sub("lora")));
        await f.RegisterAsync("rslora", Rslora(22).WriteTo(tmp.Sub("rslora")));
        await f.RegisterAsync("dora", Dora(23).WriteTo(tmp.Sub("dora")));
        string?[] models = [null, "lora", "rslora", "dora", "lora", null];
        int[][] prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11], [12, 13, 14], [15, 16]];
        GenerationRequest Req(int i) => EngineRunner.Greedy(prompts[i], 6, logprobs: 3) with { Adapters = models[i] is { } m ? [new AdapterRef(m)] : [] };

        var alone = new List<Completion>();
        for (int i = 0; i < models.Length; i++) alone.Add((await EngineRunner.RunAsync(f.Engine, Req(i)))[0]);
        var together = await Task.WhenAll(Enumerable.Range(0, models.Length).Select(i => EngineRunner.RunAsync(f.Engine, Req(i))));

        for (int i = 0; i < models.Length; i++)
        {
            Assert.Equal(alone[i].Tokens, together[i][0].Tokens);
            for (int t = 0; t < alone[i].Tokens.Count; t++)
            {
                Assert.Equal(alone[i].Logprobs[t]!.Logprob, together[i][0].Logprobs[t]!.Logprob, 1e-5);
                Assert.Equal(alone[i].Logprobs[t]!.Top.Select(x => x.TokenId), together[i][0].Logprobs[t]!.Top.Select(x => x.TokenId));
            }
        }
        // The adapters really change the output (otherwise the comparison above proves nothing).
        Assert.NotEqual(alone[1].Tokens, (await EngineRunner.RunAsync(f.Engine, EngineRunner.Greedy(prompts[1], 6)))[0].Tokens);
    }

    [Fact]
    public async Task Two_adapters_with_scales_equal_their_weighted_merge()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        var a = AllProjections(31);
        var b = AllProjections(32, r: 2);
        await f.RegisterAsync("a", a.WriteTo(tmp.Sub("a")));
        await f.RegisterAsync("b", b.WriteTo(tmp.Sub("b")));
        using var naive = new NaiveLlama(ModelDir);
        int[] prompt = [40, 41, 42];
        var req = EngineRunner.Greedy(prompt, 4, logprobs: 0) with { Adapters = [new AdapterRef("a", 0.7f), new AdapterRef("b", 0.3f)] };
        var result = (await EngineRunner.RunAsync(f.Engine, req))[0];
        var ma = Merged(a); var mb = Merged(b);
        Tensor Mix(string m, Tensor x, Tensor y) => y + 0.7 * (ma(m, x, y) - y) + 0.3 * (mb(m, x, y) - y);
        var seq = prompt.ToList();
        foreach (var (token, lp) in result.Tokens.Zip(result.Logprobs))
        {
            var expected = naive.Logits(seq, Mix)[-1].log_softmax(-1);
            Assert.Equal((int)expected.argmax().item<long>(), token);
            Assert.Equal(expected[token].item<double>(), lp!.Logprob, 1e-5);
            seq.Add(token);
        }
    }

    [Fact]
    public async Task Unknown_adapter_is_refused_at_submit()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        var e = Assert.Throws<AdapterNotFoundException>(() => f.Engine.Submit(EngineRunner.Greedy([1], 2) with { Adapters = [new AdapterRef("nope")] }, default));
        Assert.Equal("nope", e.AdapterName);
    }

    [Fact]
    public async Task Replacing_an_adapter_mid_stream_keeps_running_sequences_on_the_old_version()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        string v1 = AllProjections(41).WriteTo(tmp.Sub("v1")), v2 = AllProjections(42).WriteTo(tmp.Sub("v2"));
        int[] prompt = [7, 8, 9];
        GenerationRequest Req(int n) => EngineRunner.Greedy(prompt, n, logprobs: 0) with { Adapters = [new AdapterRef("swap")] };

        await f.RegisterAsync("swap", v1);
        var v1Alone = (await EngineRunner.RunAsync(f.Engine, Req(40)))[0];
        var running = EngineRunner.RunAsync(f.Engine, Req(40));            // starts on v1
        await f.RegisterAsync("swap", v2, replace: true);                  // acknowledged swap
        var after = (await EngineRunner.RunAsync(f.Engine, Req(40)))[0];   // must be v2
        var old = (await running)[0];
        var v2Alone = (await EngineRunner.RunAsync(f.Engine, Req(40)))[0];

        Assert.Equal(v1Alone.Tokens, old.Tokens);
        Assert.Equal(v2Alone.Tokens, after.Tokens);
        Assert.NotEqual(v1Alone.Tokens, v2Alone.Tokens);
    }
}
