using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Smore;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterServing;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Smore;

/// <summary>
/// S'MoRE through the real store, residency cache and engine, in batches mixed with LoRA and the base, against a naive
/// float64 model whose MLP projections add the naive recursive tree's delta token by token.
/// </summary>
public class SmoreServingTests
{
    private static readonly ModelConfig Base = TinyModels.Llama;
    private static string ModelDir => TinyModels.Directory(Base);
    private static readonly Projection[] Mlp = [Projection.Gate, Projection.Up, Projection.Down];

    private static readonly SmoreShape TwoByFour = new([4, 4], [2, 2], [3, 2], [8, 8], DownDim: 8, GateType: "noisy_topk", ExpertAct: "tanh");
    private static readonly SmoreShape ThreeLevels = new([3, 4, 2], [2, 1, 2], [2, 2, 3], [6, 5, 4], DownDim: 0, GateType: "switch", ExpertAct: "relu", Alpha: [4, 2, 6]);

    private static SmoreTestAdapter Tree(SmoreShape shape, int seed) =>
        new(shape, Base, [.. Enumerable.Range(0, Base.NumHiddenLayers).SelectMany(l => Mlp.Select(p => (l, p)))], seed);

    /// <summary>
    /// <c>y + scale · naive tree(x)</c> on the adapted modules (float64), reporting each token's selections to <paramref name="seen"/>.
    /// </summary>
    internal static Func<string, Tensor, Tensor, Tensor> SmoreDelta(SmoreTestAdapter adapter, double scale, Action<string, List<int>[]>? seen = null) => (module, x, y) =>
    {
        string prefix = $"base_model.model.{module}";
        if (!adapter.Tensors.ContainsKey(prefix + ".moe_W_final")) return y;
        var naive = new NaiveSmore(adapter.Shape, suffix => adapter.Tensors.GetValueOrDefault($"{prefix}.{suffix}"));
        int tokens = (int)x.shape[0], dIn = (int)x.shape[1], dOut = (int)y.shape[1];
        var rows = x.contiguous().data<double>().ToArray();
        var delta = new double[tokens * dOut];
        for (int t = 0; t < tokens; t++)
        {
            var (d, selected) = naive.Token(rows.Skip(t * dIn).Take(dIn).ToArray());
            for (int o = 0; o < dOut; o++) delta[t * dOut + o] = scale * d[o];
            seen?.Invoke(module, selected);
        }
        return TorchScalars.Add(y, tensor(delta).view(tokens, dOut));          // no implicit Scalar (platform notes)
    };

    /// <summary><c>y + scale · x (s·B·A)ᵀ</c> on the adapted modules, from the adapter's own tensors (float64).</summary>
    internal static Func<string, Tensor, Tensor, Tensor> LoraDelta(TestAdapter adapter, double scale) => (module, x, y) =>
    {
        string prefix = $"base_model.model.{module}";
        if (!adapter.Tensors.Any(t => t.Name == prefix + ".lora_A.weight")) return y;
        Tensor T(string name) { var t = adapter.Tensors.Single(x => x.Name == name); return tensor(t.Values, t.Shape).to_type(ScalarType.Float64); }
        var a = T(prefix + ".lora_A.weight");                                        // [r, d_in]
        var b = T(prefix + ".lora_B.weight");                                        // [d_out, r]
        double s = adapter.Config["lora_alpha"]!.GetValue<double>() / a.shape[0];
        return TorchScalars.Add(y, x.matmul(b.matmul(a).t()), s * scale);
    };

    [Fact]
    public async Task A_batch_mixing_smore_lora_and_the_base_gives_each_request_the_naive_trees_tokens_and_logprobs()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        var tree = Tree(TwoByFour, seed: 61);
        var deep = Tree(ThreeLevels, seed: 62);
        var lora = TestAdapter.Lora(r: 4, alpha: 8, projections: ProjectionNames.All, seed: 63, baseModel: Base);
        var stored = (await f.RegisterAsync("tree", tree.Write(tmp.Sub("tree")))).Record;
        await f.RegisterAsync("deep", deep.Write(tmp.Sub("deep")));
        await f.RegisterAsync("lora", lora.WriteTo(tmp.Sub("lora")));
        Assert.Equal("smore", stored.Description.Kind.Name);
        Assert.Equal(["gate_proj", "up_proj", "down_proj"], stored.Description.TargetModules);

        AdapterRef[][] adapters = [[], [new("tree")], [new("lora")], [new("tree", 0.5f), new("lora", 0.7f)], [new("deep", 2f)], [new("tree")]];
        Func<string, Tensor, Tensor, Tensor>?[] merged =
        [
            null,
            SmoreDelta(tree, 1),
            LoraDelta(lora, 1),
            (m, x, y) => LoraDelta(lora, 0.7)(m, x, SmoreDelta(tree, 0.5)(m, x, y)),
            SmoreDelta(deep, 2),
            SmoreDelta(tree, 1),
        ];
        int[][] prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12, 13], [14], [15, 16, 17, 18, 19]];
        var batched = await Task.WhenAll(adapters.Select((a, i) =>
            EngineRunner.RunAsync(f.Engine, EngineRunner.Greedy(prompts[i], 4, logprobs: 0) with { Adapters = a })));

        using var naive = new NaiveLlama(ModelDir);
        for (int i = 0; i < adapters.Length; i++)
        {
            var seq = prompts[i].ToList();
            foreach (var (token, lp) in batched[i][0].Tokens.Zip(batched[i][0].Logprobs))
            {
                var expected = naive.Logits(seq, merged[i])[-1].log_softmax(-1);
                Assert.Equal((int)expected.argmax().item<long>(), token);
                Assert.Equal(expected[token].item<double>(), lp!.Logprob, 1e-5);
                seq.Add(token);
            }
            // Alone, each request gets what it got in the mixed batch.
            var alone = (await EngineRunner.RunAsync(f.Engine, EngineRunner.Greedy(prompts[i], 4, logprobs: 0) with { Adapters = adapters[i] }))[0];
            Assert.Equal(batched[i][0].Tokens, alone.Tokens);
            foreach (var (b, a) in batched[i][0].Logprobs.Zip(alone.Logprobs)) Assert.Equal(b!.Logprob, a!.Logprob, 1e-5);
        }

        // S'MoRE really changes the output (otherwise the comparison above proves nothing).
        var baseLogits = naive.Logits(prompts[1])[-1].log_softmax(-1);
        var treeLogits = naive.Logits(prompts[1], SmoreDelta(tree, 1))[-1].log_softmax(-1);
        Assert.True(baseLogits.sub(treeLogits).abs().max().item<double>() > 1e-2);
    }

    [Fact]
    public async Task Expert_counters_equal_the_naive_trees_selections_for_concurrent_requests()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        string name = "tree-" + Guid.NewGuid().ToString("N")[..8];                  // ExpertUsage.Shared is process-wide
        var tree = Tree(TwoByFour, seed: 71);
        var lora = TestAdapter.Lora(r: 2, alpha: 4, projections: [Projection.Up, Projection.Q], seed: 72, baseModel: Base);
        await f.RegisterAsync(name, tree.Write(tmp.Sub("tree")));
        await f.RegisterAsync("lora", lora.WriteTo(tmp.Sub("lora")));

        int[][] prompts = [[3, 4, 5, 6], [7, 8], [9, 10, 11]];
        AdapterRef[][] adapters = [[new(name)], [new(name, 0.5f), new("lora")], [new("lora")]];
        var results = await Task.WhenAll(adapters.Select((a, i) =>
            EngineRunner.RunAsync(f.Engine, EngineRunner.Greedy(prompts[i], 3, logprobs: 0) with { Adapters = a })));

        // Every position that ran through the model: the prompt and each generated token fed back (not the last one).
        var expected = new Dictionary<(string Module, string Expert), long>();
        var routed = new Dictionary<string, long>();
        using var naive = new NaiveLlama(ModelDir);
        for (int i = 0; i < 2; i++)
        {
            var ran = prompts[i].Concat(results[i][0].Tokens.Take(results[i][0].Tokens.Count - 1)).ToList();
            double scale = adapters[i][0].Scale;
            var smore = SmoreDelta(tree, scale, (module, selected) =>
            {
                routed[module] = routed.GetValueOrDefault(module) + 1;
                for (int l = 0; l < selected.Length; l++)
                    foreach (int e in selected[l])
                        expected[(module, $"l{l}.{e}")] = expected.GetValueOrDefault((module, $"l{l}.{e}")) + 1;
            });
            // The second request also runs the LoRA: it changes what reaches the tree (q_proj of layer 0 onwards).
            naive.Logits(ran, adapters[i].Length == 1 ? smore : (m, x, y) => LoraDelta(lora, 1)(m, x, smore(m, x, y)));
        }

        var usage = ExpertUsage.Shared.Snapshot(name) ?? throw new InvalidOperationException("nothing was counted");
        Assert.Equal(Base.NumHiddenLayers * Mlp.Length, usage.Modules.Count);
        foreach (var m in usage.Modules)
        {
            string module = ProjectionNames.ModulePath(m.Layer, Enum.GetValues<Projection>().Single(p => p.ShortName() == m.Module));
            Assert.Equal(routed[module], m.RoutedTokens);
            foreach (var e in m.Experts)
                Assert.Equal(expected.GetValueOrDefault((module, e.Expert)), e.Selections);
            Assert.Equal(expected.Where(k => k.Key.Module == module).Sum(k => k.Value), m.Selections);
        }
    }
}
