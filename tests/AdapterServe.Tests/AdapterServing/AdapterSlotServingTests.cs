using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterServing;

/// <summary>A decode batch over many distinct adapters, served from the stacked slots through the whole engine.</summary>
public class AdapterSlotServingTests
{
    private static readonly ModelConfig Base = TinyModels.Llama;
    private static string ModelDir => TinyModels.Directory(Base);

    /// <summary>Adapter i: rank 1 + i % 6 (q_proj and down_proj one higher), alpha r·(1 + i/16), rsLoRA for odd i, on all projections.</summary>
    private static TestAdapter Distinct(int i)
    {
        int r = 1 + i % 6;
        var a = TestAdapter.Lora(r: r, alpha: r * (1 + i / 16.0), projections: ProjectionNames.All, seed: 500 + i, baseModel: Base,
            rankOf: (_, p) => p is Projection.Q or Projection.Down ? r + 1 : r);
        a.Config["rank_pattern"] = new System.Text.Json.Nodes.JsonObject { ["q_proj"] = r + 1, ["down_proj"] = r + 1 };
        a.Config["use_rslora"] = i % 2 == 1;
        return a;
    }

    /// <summary><c>y + x·(s·B·A)ᵀ</c> per module, materialised in float64 from the adapter's own tensors (s from the module's own rank).</summary>
    private static Func<string, Tensor, Tensor, Tensor> Merged(TestAdapter adapter)
    {
        double alpha = adapter.Config["lora_alpha"]!.GetValue<double>();
        bool rs = adapter.Config["use_rslora"]!.GetValue<bool>();
        Tensor T(string name) { var t = adapter.Tensors.Single(x => x.Name == name); return tensor(t.Values, t.Shape).to_type(ScalarType.Float64); }
        return (module, x, y) =>
        {
            string prefix = "base_model.model." + module;
            var a = T(prefix + ".lora_A.weight");
            var b = T(prefix + ".lora_B.weight");
            double r = a.shape[0], s = rs ? alpha / Math.Sqrt(r) : alpha / r;
            return TorchScalars.Add(y, x.matmul(TorchScalars.Mul(b.matmul(a), s).t()));   // no implicit Scalars (issue 8)
        };
    }

    [Fact]
    public async Task Sixteen_distinct_adapters_in_one_batch_give_each_sequence_its_solo_tokens_and_its_merged_weights()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir, maxDeviceAdapters: 20, maxBatch: 16);
        using var tmp = new TempDir();
        var adapters = Enumerable.Range(0, 16).Select(Distinct).ToArray();
        for (int i = 0; i < adapters.Length; i++) await f.RegisterAsync($"s{i}", adapters[i].WriteTo(tmp.Sub($"s{i}")));
        int[][] prompts = [.. Enumerable.Range(0, 16).Select(i => Enumerable.Range(3 + 5 * i, 1 + i % 4).ToArray())];
        GenerationRequest Req(int i) => EngineRunner.Greedy(prompts[i], 5, logprobs: 2) with { Adapters = [new AdapterRef($"s{i}")] };

        var alone = new List<Completion>();
        for (int i = 0; i < 16; i++) alone.Add((await EngineRunner.RunAsync(f.Engine, Req(i)))[0]);
        var bank = LoraSlotBank.Of(f.Cache.Slots);
        long servedAlone = bank.GroupsServed;
        var together = await Task.WhenAll(Enumerable.Range(0, 16).Select(i => EngineRunner.RunAsync(f.Engine, Req(i))));
        Assert.True(bank.GroupsServed - servedAlone >= 16 * 4, $"the batch should be served from the slots, got {bank.GroupsServed - servedAlone} groups");
        Assert.Equal(16, f.Cache.Slots.Count);

        // Float32 noise of this tiny model: the per-group path (before slots) already differs from the float64 merged
        // reference by up to 6e-5 on single low-margin tokens, 1.3e-6 on average; so: tokens exact, every logprob
        // within 1e-4, and the mean difference within 5e-6 (a wrong scale, slot or padding row shifts it by far more).
        using var naive = new NaiveLlama(ModelDir);
        double soloSum = 0, mergedSum = 0;
        int count = 0;
        for (int i = 0; i < 16; i++)
        {
            Assert.Equal(alone[i].Tokens, together[i][0].Tokens);
            var seq = prompts[i].ToList();
            var merged = Merged(adapters[i]);
            for (int t = 0; t < alone[i].Tokens.Count; t++)
            {
                var lp = together[i][0].Logprobs[t]!;
                Assert.Equal(alone[i].Logprobs[t]!.Top.Select(x => x.TokenId), lp.Top.Select(x => x.TokenId));
                var expected = naive.Logits(seq, merged)[-1].log_softmax(-1);               // W0 + s·B·A materialised, per token
                int token = together[i][0].Tokens[t];
                Assert.Equal((int)expected.argmax().item<long>(), token);
                double solo = Math.Abs(alone[i].Logprobs[t]!.Logprob - lp.Logprob), reference = Math.Abs(expected[token].item<double>() - lp.Logprob);
                Assert.True(solo <= 1e-4 && reference <= 1e-4, $"sequence {i} token {t}: {lp.Logprob} vs solo {alone[i].Logprobs[t]!.Logprob}, merged {expected[token].item<double>()}");
                soloSum += solo;
                mergedSum += reference;
                count++;
                seq.Add(token);
            }
        }
        Assert.True(soloSum / count <= 5e-6 && mergedSum / count <= 5e-6, $"mean |Δ logprob|: {soloSum / count:E2} vs solo, {mergedSum / count:E2} vs merged");
        // The adapters really differ from the base (otherwise the comparisons prove little).
        Assert.NotEqual(alone[2].Tokens, (await EngineRunner.RunAsync(f.Engine, EngineRunner.Greedy(prompts[2], 5)))[0].Tokens);
    }
}
