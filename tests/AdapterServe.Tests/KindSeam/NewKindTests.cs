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

    /// <summary>Random gains for every square projection of every layer of <paramref name="baseModel"/>.</summary>
    private static Dictionary<(int Layer, Projection Projection), float[]> Gains(int seed, ModelConfig baseModel)
    {
        var random = new Random(seed);
        var gains = new Dictionary<(int, Projection), float[]>();
        for (int layer = 0; layer < baseModel.NumHiddenLayers; layer++)
            foreach (var p in Square)
                gains[(layer, p)] = Enumerable.Range(0, baseModel.ProjectionShape(p).In).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray();
        return gains;
    }

    private static string WriteGains(string directory, Dictionary<(int, Projection), float[]> gains)
    {
        ScaledIdentityKind.Write(directory, gains);
        return directory;
    }

    /// <summary><c>y + scale · x ⊙ g</c> on the adapted modules, from the gains as written (float64).</summary>
    private static Func<string, Tensor, Tensor, Tensor> GainDelta(Dictionary<(int, Projection), float[]> gains, double scale) => (module, x, y) =>
        gains.FirstOrDefault(g => ProjectionNames.ModulePath(g.Key.Item1, g.Key.Item2) == module).Value is { } g
            ? y + x * tensor(g).to_type(ScalarType.Float64) * scale
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
        var gains = Gains(51, Base);
        var lora = TestAdapter.Lora(r: 4, alpha: 8, projections: ProjectionNames.All, seed: 52, baseModel: Base);
        var stored = (await f.RegisterAsync("gain", WriteGains(tmp.Sub("gain"), gains))).Record;     // nested files, copied by path registration
        await f.RegisterAsync("lora", lora.WriteTo(tmp.Sub("lora")));
        Assert.Equal(ScaledIdentityKind.Name, stored.Description.Kind);
        Assert.Equal(["q_proj", "o_proj"], stored.Description.TargetModules);
        Assert.True(File.Exists(Path.Combine(stored.Directory, ScaledIdentityKind.GainPath(Base.NumHiddenLayers - 1))));

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
        string dir = WriteGains(tmp.Sub("gain"), Gains(53, Base));
        var e = Assert.Throws<AdapterValidationException>(() => AdapterValidator.Validate(dir, Base));
        Assert.Contains($"peft_type '{ScaledIdentityKind.PeftType}' is not supported", e.Message);

        var d = AdapterValidator.Validate(dir, Base, AdapterKinds.BuiltIn.With(new ScaledIdentityKind()));
        Assert.Equal(2 * Base.NumHiddenLayers, d.ModuleSummaries.Count);
        Assert.All(d.ModuleSummaries, m => Assert.Equal(ScaledIdentityKind.GainPath(m.Layer), m.Details["gain_file"]));
    }

    [Fact]
    public void Two_kinds_claiming_one_peft_type_are_refused()
    {
        var e = Assert.Throws<ArgumentException>(() => AdapterKinds.BuiltIn.With(new ScaledIdentityKind(), new ScaledIdentityKind()));
        Assert.Contains(ScaledIdentityKind.PeftType, e.Message);
    }
}
