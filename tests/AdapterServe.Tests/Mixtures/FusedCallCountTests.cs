using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Adapters.Kinds.Omoe;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Mixtures;

/// <summary>
/// The fused mixtures cost a fixed number of native calls per projection: the tensors one <c>Delta</c> creates (every
/// TorchSharp op that returns a tensor registers one in the dispose scope) do not change with the number of experts,
/// top-K, the number of tokens or how the tokens route. No per-token or per-expert loop in C#.
/// </summary>
public class FusedCallCountTests
{
    const int DIn = 16, DOut = 24, Rank = 4;

    static int TensorsCreated(Func<Tensor> forward)
    {
        using var scope = NewDisposeScope();
        int before = scope.DisposablesCount;
        forward();
        return scope.DisposablesCount - before;
    }

    static MixerModule Mixer(int experts, int topK, int seed)
    {
        var g = new Generator((ulong)seed);
        var deltas = Enumerable.Range(0, experts).Select(e => (ExpertDelta?)new ExpertDelta(
            randn([Rank, DIn], generator: g).DetachFromDisposeScope(),       // [r, d_in]
            randn([DOut, Rank], generator: g).DetachFromDisposeScope(),      // [d_out, r]
            randn([DOut], generator: g).DetachFromDisposeScope())).ToList(); // [d_out]
        return MixerModule.Build(randn([experts, DIn], generator: g).DetachFromDisposeScope(), randn([experts], generator: g).DetachFromDisposeScope(),
            deltas, topK, renormalize: true, CPU, ScalarType.Float32);
    }

    static OmoeModule Omoe(int experts, int? topK, int seed)
    {
        var g = new Generator((ulong)seed);
        var a = Enumerable.Range(0, experts).Select(_ => randn([Rank, DIn], generator: g).DetachFromDisposeScope()).ToList();   // [r, d_in] each
        var b = Enumerable.Range(0, experts).Select(_ => randn([DOut, Rank], generator: g).DetachFromDisposeScope()).ToList();  // [d_out, r] each
        return OmoeModule.Build(randn([experts, DIn], generator: g).DetachFromDisposeScope(), a, b, 2.0, topK, rescaleNorm: true, 1e-6, CPU, ScalarType.Float32);
    }

    [Fact]
    public void Mixer_delta_creates_the_same_number_of_tensors_whatever_experts_top_k_tokens_and_routing()
    {
        var counts = new List<(string Case, int Tensors)>();
        foreach (var (experts, topK) in new[] { (2, 1), (6, 3), (12, 5), (12, 12), (16, 2) })
            foreach (var (tokens, seed) in new[] { (1, 1), (3, 4), (17, 2), (64, 3) })
            {
                using var module = Mixer(experts, topK, seed);
                var x = randn([tokens, DIn], generator: new Generator((ulong)(seed * 31)));   // [N, d_in]
                counts.Add(($"E={experts} K={topK} N={tokens} seed={seed}", TensorsCreated(() => module.Delta(x, out _))));
            }
        Assert.True(counts.Select(c => c.Tensors).Distinct().Count() == 1, string.Join("; ", counts.Select(c => $"{c.Case}: {c.Tensors}")));
        Assert.InRange(counts[0].Tensors, 1, 20);
    }

    [Theory]
    [InlineData(null)]
    [InlineData(2)]
    public void Omoe_delta_creates_the_same_number_of_tensors_whatever_experts_tokens_and_routing(int? topK)
    {
        var counts = new List<(string Case, int Tensors)>();
        foreach (int experts in new[] { 2, 4, 8 })
            foreach (var (tokens, seed) in new[] { (1, 1), (17, 2), (64, 3) })
            {
                using var module = Omoe(experts, topK, seed);
                var x = randn([tokens, DIn], generator: new Generator((ulong)(seed * 31)));   // [N, d_in]
                counts.Add(($"n={experts} N={tokens} seed={seed}", TensorsCreated(() => module.Delta(x, out _))));
            }
        Assert.True(counts.Select(c => c.Tensors).Distinct().Count() == 1, string.Join("; ", counts.Select(c => $"{c.Case}: {c.Tensors}")));
    }
}
