using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterServing;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Kronecker;

/// <summary>
/// LoKr and MoKA through the real serving stack (store, registry, residency cache, engine) on a tiny model: greedy
/// logprobs equal a naive model whose weights are merged in the test with <c>torch.kron</c>; mixed batches give each
/// sequence exactly what it gets alone; the per-request linear merge scales a Kronecker delta like any static kind.
/// </summary>
public class KroneckerServingTests
{
    private static readonly ModelConfig Base = TinyModels.Llama;   // hidden 32, k/v 16, intermediate 48
    private static string ModelDir => TinyModels.Directory(Base);

    public static TestAdapter Lokr(int seed) =>
        KroneckerTestFiles.Lokr(Base, ProjectionNames.All, r: 2, alpha: 3, w2: FactorForm.LowRank, seed: seed);

    /// <summary>Components of several shapes per layer shape (two equal ones stacked), listed per projection.</summary>
    public static KroneckerShape[] MokaComponents(ModelConfig model, Projection p)
    {
        var (dIn, dOut) = model.ProjectionShape(p);
        var (l, k) = LokrFactorization.Factorize(dOut);
        var (m, n) = LokrFactorization.Factorize(dIn);
        return [new(l, m, k, n), new(k, n, l, m), new(l, m, k, n), new(dOut, 1, 1, dIn)];
    }

    public static TestAdapter Moka(int seed, ModelConfig? model = null) =>
        KroneckerTestFiles.Moka(model ?? Base, ProjectionNames.All, p => MokaComponents(model ?? Base, p), scaling: 0.8, seed: seed, asPattern: true);

    /// <summary>ΔW of one module, materialised here with torch.kron from the stored factors (float64).</summary>
    public static Tensor? DeltaWeight(TestAdapter adapter, string module)
    {
        string prefix = "base_model.model." + module;
        Tensor T(string name) => KroneckerTestFiles.Stored(adapter, name).to_type(ScalarType.Float64);
        bool Has(string name) => KroneckerTestFiles.Has(adapter, name);
        if ((string)adapter.Config["peft_type"]! == "LOKR")
        {
            if (!Has(prefix + ".lokr_w1") && !Has(prefix + ".lokr_w1_a")) return null;
            Tensor Factor(string f) => Has($"{prefix}.{f}") ? T($"{prefix}.{f}") : T($"{prefix}.{f}_a").matmul(T($"{prefix}.{f}_b"));
            double s = adapter.Config["alpha"]!.GetValue<double>() / adapter.Config["r"]!.GetValue<int>();
            return kron(Factor("lokr_w1"), Factor("lokr_w2")) * s;
        }
        if (!Has(prefix + ".moka_gate")) return null;
        var gate = T(prefix + ".moka_gate").softmax(0);
        Tensor? sum = null;
        for (int i = 0; Has($"{prefix}.moka_A.{i}"); i++)
        {
            var term = kron(T($"{prefix}.moka_A.{i}"), T($"{prefix}.moka_B.{i}")) * gate[i];
            sum = sum is null ? term : sum + term;
        }
        return sum! * adapter.Config["scaling"]!.GetValue<double>();
    }

    /// <summary>The naive model's projection hook: <c>y + weight · x ΔWᵀ</c> for every module the adapter has.</summary>
    public static Func<string, Tensor, Tensor, Tensor> Merged(params (TestAdapter Adapter, double Weight)[] adapters) => (module, x, y) =>
    {
        foreach (var (adapter, weight) in adapters)
            if (DeltaWeight(adapter, module) is { } delta) y = y + x.matmul(delta.t()) * weight;
        return y;
    };

    private static async Task AssertEqualsMergedAsync(AdapterEngineFixture f, NaiveLlama naive, GenerationRequest request, Func<string, Tensor, Tensor, Tensor> merged)
    {
        var result = (await EngineRunner.RunAsync(f.Engine, request))[0];
        var seq = request.PromptTokens.ToList();
        foreach (var (token, lp) in result.Tokens.Zip(result.Logprobs))
        {
            var expected = naive.Logits(seq, merged)[-1].log_softmax(-1);
            Assert.Equal((int)expected.argmax().item<long>(), token);
            Assert.Equal(expected[token].item<double>(), lp!.Logprob, 1e-5);
            seq.Add(token);
        }
    }

    [Fact]
    public async Task Lokr_and_moka_greedy_logprobs_equal_the_naive_model_with_kron_merged_weights()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        var lokr = Lokr(51);
        var moka = Moka(52);
        await f.RegisterAsync("lokr", lokr.WriteTo(tmp.Sub("lokr")));
        await f.RegisterAsync("moka", moka.WriteTo(tmp.Sub("moka")));
        using var naive = new NaiveLlama(ModelDir);
        int[] prompt = [5, 6, 7, 8];
        await AssertEqualsMergedAsync(f, naive, EngineRunner.Greedy(prompt, 5, logprobs: 0) with { Adapters = [new AdapterRef("lokr")] }, Merged((lokr, 1)));
        await AssertEqualsMergedAsync(f, naive, EngineRunner.Greedy(prompt, 5, logprobs: 0) with { Adapters = [new AdapterRef("moka")] }, Merged((moka, 1)));
    }

    [Fact]
    public async Task Kronecker_and_lora_adapters_with_scales_equal_their_weighted_merge()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        var lokr = Lokr(61);
        var moka = Moka(62);
        var lora = TestAdapter.Lora(r: 2, alpha: 4, projections: [Projection.Q, Projection.Down], seed: 63, baseModel: Base);
        await f.RegisterAsync("lokr", lokr.WriteTo(tmp.Sub("lokr")));
        await f.RegisterAsync("moka", moka.WriteTo(tmp.Sub("moka")));
        await f.RegisterAsync("lora", lora.WriteTo(tmp.Sub("lora")));
        using var naive = new NaiveLlama(ModelDir);
        Tensor LoraMerged(string module, Tensor x, Tensor y)
        {
            string prefix = "base_model.model." + module;
            if (!lora.Tensors.Any(t => t.Name == prefix + ".lora_A.weight")) return y;
            var a = KroneckerTestFiles.Stored(lora, prefix + ".lora_A.weight").to_type(ScalarType.Float64);
            var b = KroneckerTestFiles.Stored(lora, prefix + ".lora_B.weight").to_type(ScalarType.Float64);
            return y + x.matmul(b.matmul(a).t()) * (4.0 / 2);
        }
        var kronecker = Merged((lokr, 0.6), (moka, -0.5));
        Tensor Mix(string m, Tensor x, Tensor y) => kronecker(m, x, y) + (LoraMerged(m, x, y) - y) * 0.3;
        var request = EngineRunner.Greedy([40, 41, 42], 4, logprobs: 0) with
        {
            Adapters = [new AdapterRef("lokr", 0.6f), new AdapterRef("moka", -0.5f), new AdapterRef("lora", 0.3f)],
        };
        await AssertEqualsMergedAsync(f, naive, request, Mix);
    }

    [Fact]
    public async Task Batch_mixing_lokr_moka_lora_and_the_base_gives_every_sequence_what_it_gets_alone()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        await f.RegisterAsync("lokr", Lokr(71).WriteTo(tmp.Sub("lokr")));
        await f.RegisterAsync("moka", Moka(72).WriteTo(tmp.Sub("moka")));
        await f.RegisterAsync("lora", TestAdapter.Lora(r: 4, alpha: 8, projections: ProjectionNames.All, seed: 73, baseModel: Base).WriteTo(tmp.Sub("lora")));
        string?[] models = [null, "lokr", "moka", "lora", "lokr", null, "moka"];
        int[][] prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11], [12, 13, 14], [15, 16], [17, 18, 19, 20]];
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
        // Each Kronecker adapter really changes the output (otherwise the comparison above proves nothing).
        foreach (int i in new[] { 1, 2 })
            Assert.NotEqual(alone[i].Logprobs.Select(l => l!.Logprob), (await EngineRunner.RunAsync(f.Engine, Req(i) with { Adapters = [] }))[0].Logprobs.Select(l => l!.Logprob));
    }
}
