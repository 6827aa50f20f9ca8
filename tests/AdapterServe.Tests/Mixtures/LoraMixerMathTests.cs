using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;
using static AdapterServe.Tests.Mixtures.MixtureNaive;

namespace AdapterServe.Tests.Mixtures;

public class LoraMixerMathTests
{
    const int DIn = 16, DOut = 24;

    sealed record Expert(Tensor A, Tensor B, double Scaling, Tensor? Bias);

    /// <summary>Experts of different ranks and scalings, two with a bias, one (null) that does not adapt the module.</summary>
    static (Tensor Router, Tensor? RouterBias, Expert?[] Experts) Mixture(int seed, bool routerBias)
    {
        var g = new Generator((ulong)seed);
        int[] ranks = [2, 4, 3, 4, 1, 5];
        var experts = new Expert?[ranks.Length];
        for (int e = 0; e < ranks.Length; e++)
        {
            if (e == 3) continue;                                                     // expert 3 does not adapt this module
            experts[e] = new Expert(
                randn([ranks[e], DIn], generator: g).mul(0.3).DetachFromDisposeScope(),  // [r_e, d_in]
                randn([DOut, ranks[e]], generator: g).mul(0.3).DetachFromDisposeScope(), // [d_out, r_e]
                (e + 1) * 0.75,
                e is 1 or 4 ? randn([DOut], generator: g).mul(0.1).DetachFromDisposeScope() : null);
        }
        var router = randn([ranks.Length, DIn], generator: g).DetachFromDisposeScope();   // [E, d_in]
        var bias = routerBias ? randn([ranks.Length], generator: g).DetachFromDisposeScope() : null;
        return (router, bias, experts);
    }

    static MixerModule Build(Tensor router, Tensor? routerBias, Expert?[] experts, int topK, bool renormalize) =>
        MixerModule.Build(router, routerBias,
            experts.Select(x => x is null ? null : new ExpertDelta(x.A, TorchScalars.Mul(x.B, x.Scaling), x.Bias is null ? null : TorchScalars.Mul(x.Bias, x.Scaling))).ToList(),
            topK, renormalize, CPU, ScalarType.Float32);

    /// <summary>Per token: softmax router, explicit top-K, renormalise, Σ p̃_e · s_e · (B_e(A_e x) + bias_e).</summary>
    static (double[,] Y, int[][] Selected) Naive(Tensor x, Tensor router, Tensor? routerBias, Expert?[] experts, int topK, bool renormalize)
    {
        var xs = Host2(x);
        var w = Host2(router);
        var b = routerBias is null ? null : Host1(routerBias);
        int n = xs.GetLength(0);
        var y = new double[n, DOut];
        var selected = new int[n][];
        for (int t = 0; t < n; t++)
        {
            var xt = Row(xs, t);
            var logits = MatVec(w, xt);
            if (b is not null) for (int e = 0; e < logits.Length; e++) logits[e] += b[e];
            var p = Softmax(logits);
            var top = TopK(p, topK);
            selected[t] = top;
            double mass = renormalize ? top.Sum(e => p[e]) : 1.0;
            foreach (int e in top)
            {
                if (experts[e] is not { } ex) continue;
                var h = MatVec(Host2(ex.A), xt);                                       // [r_e]
                var delta = MatVec(Host2(ex.B), h);                                    // [d_out]
                var bias = ex.Bias is null ? new double[DOut] : Host1(ex.Bias);
                for (int o = 0; o < DOut; o++) y[t, o] += p[e] / mass * ex.Scaling * (delta[o] + bias[o]);
            }
        }
        return (y, selected);
    }

    [Theory]
    [InlineData(3, true, true)]
    [InlineData(3, false, true)]
    [InlineData(1, true, false)]
    [InlineData(6, true, true)]
    [InlineData(2, false, false)]
    [InlineData(3, true, true, 1)]     // one decode token
    [InlineData(1, true, false, 1)]
    [InlineData(2, false, true, 2)]
    [InlineData(6, true, true, 1)]
    public void Fused_mixer_equals_a_per_token_loop_with_explicit_top_k_and_selects_the_same_experts(int topK, bool renormalize, bool routerBias, int tokens = 13)
    {
        var (router, bias, experts) = Mixture(seed: 11 + topK, routerBias);
        using var module = Build(router, bias, experts, topK, renormalize);
        var x = randn([tokens, DIn], generator: new Generator(5));

        var delta = module.Delta(x, out var selected);
        var (expected, expectedSelected) = Naive(x, router, bias, experts, topK, renormalize);

        AssertClose(expected, delta);
        var got = Host2(selected);
        for (int t = 0; t < expectedSelected.Length; t++)
            Assert.Equal(expectedSelected[t].Order(), Row(got, t).Select(v => (int)v).Order());
    }

    [Fact]
    public void Stacked_weights_pad_each_expert_to_the_largest_rank_with_its_scaling_folded_in()
    {
        var (router, bias, experts) = Mixture(seed: 3, routerBias: false);
        using var module = Build(router, bias, experts, 3, true);
        Assert.Equal(5, module.Rank);
        Assert.Equal(new long[] { 6 * 5, DIn }, module.AAll.shape);
        Assert.Equal(new long[] { 6 * 5, DOut }, module.BTAll.shape);
        var a = Host2(module.AAll);
        var bt = Host2(module.BTAll);
        for (int e = 0; e < 6; e++)
        {
            var ea = experts[e] is { } ex ? Host2(ex.A) : new double[0, DIn];
            var eb = experts[e] is { } ey ? Host2(ey.B) : new double[DOut, 0];
            double s = experts[e]?.Scaling ?? 0;
            for (int j = 0; j < 5; j++)
            {
                for (int i = 0; i < DIn; i++) Assert.Equal(j < ea.GetLength(0) ? ea[j, i] : 0, a[e * 5 + j, i], 6);
                for (int o = 0; o < DOut; o++) Assert.Equal(j < eb.GetLength(1) ? s * eb[o, j] : 0, bt[e * 5 + j, o], 5);
            }
        }
    }

    [Fact]
    public void Routing_weights_are_zero_outside_the_top_k_and_sum_to_one_when_renormalised()
    {
        var (router, bias, experts) = Mixture(seed: 8, routerBias: true);
        using var module = Build(router, bias, experts, 3, true);
        var (weights, selected) = module.Route(randn([9, DIn], generator: new Generator(2)));
        var w = Host2(weights);
        var s = Host2(selected);
        for (int t = 0; t < 9; t++)
        {
            var chosen = Row(s, t).Select(v => (int)v).ToHashSet();
            Assert.Equal(3, chosen.Count);
            for (int e = 0; e < 6; e++)
                if (!chosen.Contains(e)) Assert.Equal(0, w[t, e]);
                else Assert.True(w[t, e] > 0);
            Assert.Equal(1.0, Row(w, t).Sum(), 5);
        }
    }
}
