using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterServing;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.KindSeam;

/// <summary>A kind defined outside the Adapters room joins through the kinds list alone and is served next to LoRA and the base.</summary>
public class NewKindTests
{
    private static readonly ModelConfig Base = TinyModels.Llama;
    private static string ModelDir => TinyModels.Directory(Base);
    private static readonly Projection[] Square = [Projection.Q, Projection.O];

    private static TestAdapter Gains(int seed)
    {
        var adapter = new TestAdapter
        {
            Config = new JsonObject
            {
                ["peft_type"] = ScaledIdentityKind.PeftType,
                ["target_modules"] = new JsonArray(Square.Select(p => (JsonNode)p.ShortName()).ToArray()),
            },
        };
        var random = new Random(seed);
        for (int layer = 0; layer < Base.NumHiddenLayers; layer++)
            foreach (var p in Square)
                adapter.Add($"{TestAdapter.Prefix(layer, p)}{ScaledIdentityKind.Suffix}", [Base.ProjectionShape(p).In], random);
        return adapter;
    }

    /// <summary><c>y + scale · x ⊙ g</c> on the adapted modules, from the adapter's own tensors (float64).</summary>
    private static Func<string, Tensor, Tensor, Tensor> GainDelta(TestAdapter adapter, double scale) => (module, x, y) =>
        adapter.Tensors.SingleOrDefault(t => t.Name == $"base_model.model.{module}{ScaledIdentityKind.Suffix}") is { } g
            ? y + x * tensor(g.Values, g.Shape).to_type(ScalarType.Float64) * scale
            : y;

    /// <summary><c>y + scale · x (s·B·A)ᵀ</c> on the adapted modules, from the adapter's own tensors (float64).</summary>
    private static Func<string, Tensor, Tensor, Tensor> LoraDelta(TestAdapter adapter, double scale) => (module, x, y) =>
    {
        string prefix = $"base_model.model.{module}";
        if (!adapter.Tensors.Any(t => t.Name == prefix + ".lora_A.weight")) return y;
        Tensor T(string name) { var t = adapter.Tensors.Single(x => x.Name == name); return tensor(t.Values, t.Shape).to_type(ScalarType.Float64); }
        var a = T(prefix + ".lora_A.weight");                                        // [r, d_in]
        var b = T(prefix + ".lora_B.weight");                                        // [d_out, r]
        double s = adapter.Config["lora_alpha"]!.GetValue<double>() / a.shape[0];
        return y + x.matmul(b.matmul(a).t()) * (s * scale);
    };

    [Fact]
    public async Task A_kind_from_outside_the_room_is_served_in_one_batch_with_lora_and_the_base()
    {
        var kinds = AdapterKinds.BuiltIn.With(new ScaledIdentityKind());
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir, kinds: kinds);
        using var tmp = new TempDir();
        var gains = Gains(51);
        var lora = TestAdapter.Lora(r: 4, alpha: 8, projections: ProjectionNames.All, seed: 52, baseModel: Base);
        var stored = (await f.RegisterAsync("gain", gains.WriteTo(tmp.Sub("gain")))).Record;
        await f.RegisterAsync("lora", lora.WriteTo(tmp.Sub("lora")));
        Assert.Equal(ScaledIdentityKind.Name, stored.Description.Kind);
        Assert.Equal(["q_proj", "o_proj"], stored.Description.TargetModules);

        AdapterRef[][] adapters = [[], [new("gain")], [new("lora")], [new("gain", 0.5f), new("lora", 0.7f)], [new("gain", 2f)]];
        Func<string, Tensor, Tensor, Tensor>?[] merged =
        [
            null,
            GainDelta(gains, 1),
            LoraDelta(lora, 1),
            (m, x, y) => LoraDelta(lora, 0.7)(m, x, GainDelta(gains, 0.5)(m, x, y)),
            GainDelta(gains, 2),
        ];
        int[][] prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12, 13], [14]];
        var results = await Task.WhenAll(adapters.Select((a, i) =>
            EngineRunner.RunAsync(f.Engine, EngineRunner.Greedy(prompts[i], 4, logprobs: 0) with { Adapters = a })));

        using var naive = new NaiveLlama(ModelDir);
        for (int i = 0; i < adapters.Length; i++)
        {
            var seq = prompts[i].ToList();
            foreach (var (token, lp) in results[i][0].Tokens.Zip(results[i][0].Logprobs))
            {
                var expected = naive.Logits(seq, merged[i])[-1].log_softmax(-1);
                Assert.Equal((int)expected.argmax().item<long>(), token);
                Assert.Equal(expected[token].item<double>(), lp!.Logprob, 1e-5);
                seq.Add(token);
            }
        }
        // The new kind really changes the output (otherwise the comparison above proves nothing).
        var withGain = (await EngineRunner.RunAsync(f.Engine, EngineRunner.Greedy(prompts[0], 1, logprobs: 0) with { Adapters = [new("gain")] }))[0];
        var baseAlone = (await EngineRunner.RunAsync(f.Engine, EngineRunner.Greedy(prompts[0], 1, logprobs: 0)))[0];
        Assert.True(Math.Abs(withGain.Logprobs[0]!.Logprob - baseAlone.Logprobs[0]!.Logprob) > 1e-3 || withGain.Tokens[0] != baseAlone.Tokens[0]);
    }

    [Fact]
    public void The_built_in_kinds_refuse_the_new_peft_type_and_the_extended_list_describes_it()
    {
        using var tmp = new TempDir();
        string dir = Gains(53).WriteTo(tmp.Sub("gain"));
        var e = Assert.Throws<AdapterValidationException>(() => AdapterValidator.Validate(dir, Base));
        Assert.Contains($"peft_type '{ScaledIdentityKind.PeftType}' is not supported", e.Message);

        var d = AdapterValidator.Validate(dir, Base, AdapterKinds.BuiltIn.With(new ScaledIdentityKind()));
        Assert.Equal(2 * Base.NumHiddenLayers, d.ModuleSummaries.Count);
        Assert.All(d.ModuleSummaries, m => Assert.Equal(true, m.Details["gain"]));
    }

    [Fact]
    public void Two_kinds_claiming_one_peft_type_are_refused()
    {
        var e = Assert.Throws<ArgumentException>(() => AdapterKinds.BuiltIn.With(new ScaledIdentityKind(), new ScaledIdentityKind()));
        Assert.Contains(ScaledIdentityKind.PeftType, e.Message);
    }
}
