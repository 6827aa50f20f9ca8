using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Kinds.Smore;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Smore;

/// <summary>
/// The fused S'MoRE forward (routing top-down, experts bottom-up, level by level) against a naive per-token recursive
/// evaluation of the tree in double precision: same delta at 1e-5 in float32, same experts selected at every sub-layer,
/// in both forms of the routing and experts (batched libtorch calls, and the native tree in one call).
/// </summary>
public sealed class SmoreTreeTests
{
    private static readonly ModelConfig Base = TestAdapter.TinyBase;

    /// <summary>1, 2 and 3 sub-layers; the 3-level tree has a fan-out of 1 in the middle (noisy_topk's raw-logit case).</summary>
    private static readonly Dictionary<int, (int[] Experts, int[] Active, int[] Ranks, int[] Gates)> Trees = new()
    {
        [1] = ([4], [2], [3], [5]),
        [2] = ([4, 3], [2, 2], [2, 3], [5, 4]),
        [3] = ([3, 4, 2], [2, 1, 2], [2, 2, 3], [4, 5, 3]),
    };

    /// <summary>The two forms of the tree's routing and experts: batched libtorch calls, and the native tree in one call.</summary>
    private static readonly MixtureForm[] Forms = [MixtureForm.Tensors, MixtureForm.Native];

    public static TheoryData<int, string, string, string, MixtureForm> GatesAndActivations()
    {
        var data = new TheoryData<int, string, string, string, MixtureForm>();
        foreach (var form in Forms)
            foreach (int levels in Trees.Keys)
                foreach (string gate in new[] { "switch", "noisy_topk", "dense" })
                    foreach (string act in new[] { "tanh", "identity", "relu", "prelu|0.25" })
                        data.Add(levels, gate, act, "all", form);
        return data;
    }

    public static TheoryData<int, string, string, string, MixtureForm> ActivationPositions()
    {
        var data = new TheoryData<int, string, string, string, MixtureForm>();
        foreach (var form in Forms)
            foreach (int levels in Trees.Keys)
                foreach (string gate in new[] { "switch", "noisy_topk", "dense" })
                    foreach (string position in new[] { "child", "child_v2" })
                        data.Add(levels, gate, "tanh", position, form);
        return data;
    }

    public static TheoryData<string, MixtureForm> GatesInBothForms()
    {
        var data = new TheoryData<string, MixtureForm>();
        foreach (var form in Forms)
            foreach (string gate in new[] { "switch", "noisy_topk", "dense" })
                data.Add(gate, form);
        return data;
    }

    [Theory]
    [MemberData(nameof(GatesAndActivations))]
    [MemberData(nameof(ActivationPositions))]
    public void Fused_tree_equals_naive_recursive_tree_and_selects_the_same_experts(int levels, string gate, string act, string position, MixtureForm form)
    {
        NativeForm.Require(form);
        var (experts, active, ranks, gates) = Trees[levels];
        // lora_alpha null (scaling 1) for even level counts, per-level alphas otherwise; prelu routers on the dense gate.
        double[]? alpha = levels % 2 == 0 ? null : Enumerable.Range(0, levels).Select(l => 2.0 + l).ToArray();
        var shape = new SmoreShape(experts, active, ranks, gates, DownDim: 6, GateType: gate, ExpertAct: act,
            GateAct: gate == "dense" ? "prelu|0.1" : "relu", Position: position, Alpha: alpha);
        foreach (var projection in new[] { Projection.Up, Projection.Down })
            AssertMatchesNaive(shape, projection, tokens: 9, seed: levels * 31 + gate.Length, form);
    }

    [Theory]
    [MemberData(nameof(NativeForm.Both), MemberType = typeof(NativeForm))]
    public void Tokens_route_to_different_experts(MixtureForm form)
    {
        NativeForm.Require(form);
        // Guards the comparison above against a degenerate router that sends every token to the same experts.
        var shape = new SmoreShape([4, 3], [2, 1], [2, 3], [5, 4], GateType: "switch");
        var adapter = new SmoreTestAdapter(shape, Base, [(0, Projection.Up)], seed: 5);
        using var module = Load(adapter, Projection.Up);
        using var scope = NewDisposeScope();
        var x = randn([32, Base.HiddenSize], generator: new Generator(11));
        var (_, routing) = SmoreTree.Forward(module, x, form);
        for (int l = 0; l < shape.Levels; l++)
        {
            var distinct = Enumerable.Range(0, 32).Select(t => string.Join(",", routing.Ids[l][t].data<long>().ToArray())).Distinct().Count();
            Assert.True(distinct > 1, $"sub-layer {l}: every token took the same experts");
        }
    }

    [Theory]
    [MemberData(nameof(NativeForm.Both), MemberType = typeof(NativeForm))]
    public void Expert_scaling_is_lora_alpha_over_rank_per_level(MixtureForm form)
    {
        NativeForm.Require(form);
        // Same weights, lora_alpha [4, 9] against null: only the scalings sc_l = alpha_l / r_l differ, and the naive tree
        // applies them by hand.
        var scaled = new SmoreShape([3, 2], [2, 2], [2, 3], [4, 4], GateType: "dense", ExpertAct: "identity", Alpha: [4.0, 9.0]);
        AssertMatchesNaive(scaled, Projection.Up, tokens: 5, seed: 3, form);
    }

    [Theory]
    [MemberData(nameof(GatesInBothForms))]
    public void Selections_are_counted_per_level_and_expert_as_the_naive_tree_visits_them(string gate, MixtureForm form)
    {
        NativeForm.Require(form);
        var shape = new SmoreShape([3, 4, 2], [2, 2, 2], [2, 2, 3], [4, 5, 3], GateType: gate);
        var adapter = new SmoreTestAdapter(shape, Base, [(0, Projection.Up)], seed: 21);
        using var module = Load(adapter, Projection.Up);
        var usage = new AdapterServe.Adapters.Experts.ExpertUsage(new AdapterServe.Adapters.Experts.ExpertUsageMetrics(Prometheus.Metrics.NewCustomRegistry()));
        string[] labels = [.. Enumerable.Range(0, 3).SelectMany(l => Enumerable.Range(0, shape.Experts[l]).Select(e => $"l{l}.{e}"))];
        var site = new AdapterServe.Adapters.Experts.ExpertSite("tree", 0, Projection.Up, labels);
        const int tokens = 13;
        var x = randn([tokens, Base.HiddenSize], generator: new Generator(4));

        using (var tally = usage.BeginStep())
        {
            using var scope = NewDisposeScope();
            var (_, routing) = SmoreTree.Forward(module, x, form);
            SmoreTree.Record(tally, site, module, routing);
            tally.Flush();
        }

        var expected = labels.ToDictionary(l => l, _ => 0L);
        var naive = new NaiveSmore(shape, adapter.Module(0, Projection.Up));
        var xs = x.data<float>().Select(v => (double)v).ToArray();
        for (int t = 0; t < tokens; t++)
        {
            var (_, selected) = naive.Token(xs.Skip(t * Base.HiddenSize).Take(Base.HiddenSize).ToArray());
            for (int l = 0; l < 3; l++)
                foreach (int e in selected[l]) expected[$"l{l}.{e}"]++;
        }
        var counted = usage.Snapshot("tree")!.Modules.Single();
        Assert.Equal(tokens, counted.RoutedTokens);
        Assert.Equal(expected, counted.Experts.ToDictionary(c => c.Expert, c => c.Selections));
    }

    [Theory]
    [MemberData(nameof(GatesInBothForms))]
    public void The_fused_tree_creates_the_same_number_of_tensors_whatever_experts_fan_outs_tokens_and_routing(string gate, MixtureForm form)
    {
        NativeForm.Require(form);
        // Every TorchSharp op that returns a tensor registers it in the dispose scope: a fixed count per sub-layer means
        // no loop over tokens, experts or paths in C#. (Fan-outs of 1 skip the renormalisation: all fan-outs here are ≥ 2.)
        var counts = new List<(string Case, int Tensors)>();
        foreach (var (experts, active) in new[] { (new[] { 2, 3 }, new[] { 2, 2 }), (new[] { 6, 4 }, new[] { 3, 2 }), (new[] { 8, 8 }, new[] { 4, 3 }) })
            foreach (var (tokens, seed) in new[] { (1, 1), (9, 2), (40, 3) })
            {
                var adapter = new SmoreTestAdapter(new SmoreShape(experts, active, [3, 2], [5, 4], GateType: gate), Base, [(0, Projection.Up)], seed);
                using var module = Load(adapter, Projection.Up);
                var x = randn([tokens, Base.HiddenSize], generator: new Generator((ulong)(seed * 31)));   // [N, d_in]
                using var scope = NewDisposeScope();
                int before = scope.DisposablesCount;
                SmoreTree.Forward(module, x, form);
                counts.Add(($"s={string.Join(",", experts)} f={string.Join(",", active)} N={tokens} seed={seed}", scope.DisposablesCount - before));
            }
        Assert.True(counts.Select(c => c.Tensors).Distinct().Count() == 1, string.Join("; ", counts.Select(c => $"{c.Case}: {c.Tensors}")));
        // ~30 per sub-layer of 2, gate included; the native form: the two GEMMs, its outputs (x_L, ids and weights per sub-layer) and views.
        Assert.InRange(counts[0].Tensors, 1, form == MixtureForm.Native ? 12 : 80);
    }

    private static SmoreModule Load(SmoreTestAdapter adapter, Projection projection)
    {
        var config = SmoreConfig.Parse(adapter.Config);
        var (dIn, dOut) = Base.ProjectionShape(projection);
        return SmoreModule.FromTensors(config, 0, projection, dIn, dOut, adapter.Module(0, projection), CPU, SmoreTestAdapter.Prefix(0, projection));
    }

    private static void AssertMatchesNaive(SmoreShape shape, Projection projection, int tokens, int seed, MixtureForm form)
    {
        var adapter = new SmoreTestAdapter(shape, Base, [(0, projection)], seed);
        using var module = Load(adapter, projection);
        using var scope = NewDisposeScope();
        var (dIn, dOut) = Base.ProjectionShape(projection);
        var x = randn([tokens, dIn], generator: new Generator((ulong)seed + 100));                  // [N, d_in]

        var (delta, routing) = SmoreTree.Forward(module, x, form);                                    // [N, d_out]
        Assert.Equal([tokens, dOut], delta.shape);

        var naive = new NaiveSmore(shape, adapter.Module(0, projection));
        var xs = x.to(ScalarType.Float64).data<double>().ToArray();
        var expected = new double[tokens * dOut];
        for (int t = 0; t < tokens; t++)
        {
            var (y, selected) = naive.Token(xs.Skip(t * dIn).Take(dIn).ToArray());
            Array.Copy(y, 0, expected, t * dOut, dOut);
            for (int l = 0; l < shape.Levels; l++)
                Assert.Equal(selected[l].Select(e => (long)e).ToArray(), routing.Ids[l][t].data<long>().ToArray());
        }
        var reference = tensor(expected).view(tokens, dOut).to(ScalarType.Float32);
        var gap = delta.sub(reference).abs().max().item<float>();
        Assert.True(delta.allclose(reference, rtol: 1e-5, atol: 1e-5), $"{shape}: max |fused − naive| = {gap}");
    }
}
