using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Kinds.Omoe;
using AdapterServe.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;
using static AdapterServe.Tests.Mixtures.MixtureNaive;

namespace AdapterServe.Tests.Mixtures;

public class OmoeMathTests
{
    const int DIn = 16, DOut = 24, Rank = 3, Experts = 4;
    const double Alpha = 6, Eps = 1e-6;

    static (Tensor Router, Tensor[] A, Tensor[] B) Weights(int seed, int zeroExpert = -1)
    {
        var g = new Generator((ulong)seed);
        var a = new Tensor[Experts];
        var b = new Tensor[Experts];
        for (int i = 0; i < Experts; i++)
        {
            a[i] = randn([Rank, DIn], generator: g).mul(0.3).DetachFromDisposeScope();    // [r, d_in]
            b[i] = randn([DOut, Rank], generator: g).mul(0.3).DetachFromDisposeScope();   // [d_out, r]
            if (i == zeroExpert) b[i] = zeros([DOut, Rank]).DetachFromDisposeScope();
        }
        return (randn([Experts, DIn], generator: g).DetachFromDisposeScope(), a, b);
    }

    /// <summary>Per token: every expert's output, softmax gates, explicit top-K (kept in expert order, renormalised), then
    /// modified Gram–Schmidt in expert order with the ε guard, and Σ g_i · (‖E_i‖ or 1) · q_i.</summary>
    static (double[,] Y, int[][] Selected) Naive(Tensor x, Tensor router, Tensor[] a, Tensor[] b, int? topK, bool rescaleNorm)
    {
        var xs = Host2(x);
        var w = Host2(router);
        int n = xs.GetLength(0);
        double s = Alpha / Rank;
        var y = new double[n, DOut];
        var selected = new int[n][];
        for (int t = 0; t < n; t++)
        {
            var xt = Row(xs, t);
            var outputs = Enumerable.Range(0, Experts)
                .Select(i => MatVec(Host2(b[i]), MatVec(Host2(a[i]), xt)).Select(v => s * v).ToArray()).ToArray();
            var g = Softmax(MatVec(w, xt));
            var chosen = topK is { } k ? TopK(g, k).Order().ToArray() : Enumerable.Range(0, Experts).ToArray();
            selected[t] = chosen;
            double mass = topK is null ? 1.0 : chosen.Sum(i => g[i]);
            var basis = new List<double[]>();
            foreach (int i in chosen)
            {
                var v = (double[])outputs[i].Clone();
                foreach (var q in basis)
                {
                    double c = Dot(q, v);
                    for (int o = 0; o < DOut; o++) v[o] -= c * q[o];
                }
                double norm = Norm(v);
                var qi = norm < Eps ? new double[DOut] : v.Select(e => e / norm).ToArray();
                basis.Add(qi);
                double coefficient = g[i] / mass * (rescaleNorm ? Norm(outputs[i]) : 1.0);
                for (int o = 0; o < DOut; o++) y[t, o] += coefficient * qi[o];
            }
        }
        return (y, selected);
    }

    public static TheoryData<int?, bool, int, MixtureForm> Cases()
    {
        var data = new TheoryData<int?, bool, int, MixtureForm>();
        foreach (var form in new[] { MixtureForm.Tensors, MixtureForm.Native })
            foreach (var (topK, rescaleNorm, zeroExpert) in new (int?, bool, int)[] { (null, true, -1), (null, false, -1), (2, true, -1), (1, true, -1), (null, true, 1), (3, false, 0) })
                data.Add(topK, rescaleNorm, zeroExpert, form);
        return data;
    }

    /// <summary>Both forms of the mixture (batched libtorch calls with a QR; the native Gram–Schmidt in one call) against the naive loop.</summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void Omoe_equals_a_per_token_gram_schmidt_loop_and_selects_the_same_experts(int? topK, bool rescaleNorm, int zeroExpert, MixtureForm form)
    {
        NativeForm.Require(form);
        var (router, a, b) = Weights(seed: 21, zeroExpert);
        using var module = OmoeModule.Build(router, a, b, Alpha / Rank, topK, rescaleNorm, Eps, CPU, ScalarType.Float32);
        var x = randn([11, DIn], generator: new Generator(4));

        var delta = module.Delta(x, out var selected, form);
        var (expected, expectedSelected) = Naive(x, router, a, b, topK, rescaleNorm);

        AssertClose(expected, delta);
        if (topK is null) Assert.Null(selected);
        else
        {
            var got = Host2(selected!);
            for (int t = 0; t < expectedSelected.Length; t++)
                Assert.Equal(expectedSelected[t], Row(got, t).Select(v => (int)v));
        }
    }

    [Fact]
    public void Orthonormalised_expert_contributions_are_pairwise_orthogonal_per_token()
    {
        var (router, a, b) = Weights(seed: 5, zeroExpert: 2);
        using var module = OmoeModule.Build(router, a, b, Alpha / Rank, null, true, Eps, CPU, ScalarType.Float32);
        var m = module.ExpertOutputs(randn([7, DIn], generator: new Generator(9)));            // [N, d_out, n]
        var (q, norms, perm) = OmoeModule.Orthonormalise(m, tensor((float)Eps));

        var columns = Host2(q.permute(0, 2, 1).reshape(7 * Experts, DOut));                    // row t·n + j = q_j of token t
        var order = Host2(perm);
        for (int t = 0; t < 7; t++)
        {
            Assert.Equal([0.0, 1, 3, 2], Row(order, t));                                       // the zero expert is moved last
            for (int i = 0; i < Experts; i++)
            {
                var qi = Row(columns, t * Experts + i);
                Assert.Equal((int)order[t, i] == 2 ? 0.0 : 1.0, Norm(qi), 5);
                for (int j = i + 1; j < Experts; j++)
                    Assert.True(Math.Abs(Dot(qi, Row(columns, t * Experts + j))) < 1e-4, $"token {t}: ⟨q_{i}, q_{j}⟩ is not ~0");
            }
        }
        Assert.Equal(0.0, Host2(norms).Cast<double>().Where((_, k) => k % Experts == Experts - 1).Max(), 6);
    }
}
