using AdapterServe.Adapters.Kinds.Kronecker;

namespace AdapterServe.Tests.Kronecker;

/// <summary>PEFT's <c>factorization</c> and LoKr factor layout, against the values PEFT documents and computes.</summary>
public class LokrFactorizationTests
{
    [Theory]
    [InlineData(4096, -1, 64, 64)]
    [InlineData(14336, -1, 112, 128)]
    [InlineData(2048, -1, 32, 64)]
    [InlineData(256, -1, 16, 16)]     // PEFT's docstring examples
    [InlineData(128, -1, 8, 16)]
    [InlineData(127, -1, 1, 127)]
    [InlineData(128, 4, 4, 32)]
    [InlineData(576, -1, 24, 24)]     // SmolLM2-135M: hidden, intermediate, k/v
    [InlineData(1536, -1, 32, 48)]
    [InlineData(192, -1, 12, 16)]
    [InlineData(128, 32, 32, 4)]      // a dividing factor is returned as (factor, dim/factor), unsorted
    [InlineData(100, 3, 2, 50)]       // a factor that does not divide only bounds the search
    public void Factorization_matches_peft(int dimension, int factor, int m, int n) =>
        Assert.Equal((m, n), LokrFactorization.Factorize(dimension, factor));

    [Fact]
    public void Factorization_without_factor_is_the_divisor_pair_closest_to_the_square_root()
    {
        // Independent rule: among m·n = d with m ≤ n, PEFT's walk stops at the pair with the smallest m + n.
        for (int d = 1; d <= 3000; d++)
        {
            var best = Enumerable.Range(1, d).Where(m => d % m == 0 && m * m <= d).Select(m => (m, d / m)).MinBy(p => p.Item1 + p.Item2);
            Assert.Equal(best, LokrFactorization.Factorize(d));
        }
    }

    [Theory]
    [InlineData(4096, 4096, 16, false, true, false)]   // r 16 < 64/2: w2 low-rank; w1 whole without decompose_both
    [InlineData(4096, 4096, 16, true, false, false)]   // decompose_both: w1 low-rank too
    [InlineData(4096, 4096, 32, true, true, true)]     // r 32 is not < 64/2
    [InlineData(576, 576, 8, false, true, false)]      // 24·24: 8 < 12
    [InlineData(576, 576, 12, false, true, true)]      // 12 is not < 12
    public void Layout_decides_low_rank_factors_like_peft(int dOut, int dIn, int r, bool decomposeBoth, bool fullW1, bool fullW2)
    {
        var layout = LokrFactorization.Layout(dOut, dIn, r, decomposeBoth);
        var (m, n) = LokrFactorization.Factorize(dIn);
        var (l, k) = LokrFactorization.Factorize(dOut);
        Assert.Equal(new KroneckerShape(l, m, k, n), layout.Shape);
        Assert.Equal(fullW1, layout.FullW1);
        Assert.Equal(fullW2, layout.FullW2);
    }
}
