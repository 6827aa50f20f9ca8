namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// The shape of one Kronecker term <c>kron(A [Ma, Na], B [Mb, Nb])</c> of a projection's delta: it covers a layer of
/// <c>d_out = Ma·Mb</c>, <c>d_in = Na·Nb</c> (methods.md §2.3, §3). For LoKr, A is <c>lokr_w1 [out_l, in_m]</c> and B is
/// <c>lokr_w2 [out_k, in_n]</c>; for MoKA it is one component <c>[ma, na, mb, nb]</c>.
/// </summary>
public readonly record struct KroneckerShape(int Ma, int Na, int Mb, int Nb)
{
    public long OutFeatures => (long)Ma * Mb;
    public long InFeatures => (long)Na * Nb;

    /// <summary>Multiply-adds per token when x is contracted with A first: <c>Ma·Na·Nb + Ma·Nb·Mb</c>.</summary>
    public long LeftFirstCost => (long)Ma * Na * Nb + (long)Ma * Nb * Mb;

    /// <summary>Multiply-adds per token when x is contracted with B first: <c>Na·Nb·Mb + Ma·Na·Mb</c>.</summary>
    public long RightFirstCost => (long)Na * Nb * Mb + (long)Ma * Na * Mb;

    public override string ToString() => $"[{Ma}, {Na}] ⊗ [{Mb}, {Nb}]";
}

/// <summary>PEFT's LoKr dimension split and factor layout, ported exactly (methods.md §2.3).</summary>
public static class LokrFactorization
{
    /// <summary>
    /// PEFT's <c>factorization(dimension, factor)</c>: two numbers whose product is <paramref name="dimension"/>, the
    /// pair closest to the square root (or to <paramref name="factor"/> when it is given). With a factor that divides
    /// the dimension PEFT returns <c>(factor, dimension / factor)</c> as is, unsorted; otherwise <c>(min, max)</c>.
    /// E.g. 4096 → (64, 64), 14336 → (112, 128), 2048 → (32, 64), 128 with factor 4 → (4, 32).
    /// </summary>
    public static (int M, int N) Factorize(int dimension, int factor = -1)
    {
        if (dimension < 1) throw new ArgumentOutOfRangeException(nameof(dimension), dimension, "a dimension is at least 1");
        if (factor > 0 && dimension % factor == 0) return (factor, dimension / factor);
        if (factor == -1) factor = dimension;
        int m = 1, n = dimension, length = m + n;
        while (m < n)
        {
            int newM = m + 1;
            while (dimension % newM != 0) newM++;
            int newN = dimension / newM;
            if (newM + newN > length || newM > factor) break;
            (m, n) = (newM, newN);
        }
        return m > n ? (n, m) : (m, n);
    }

    /// <summary>
    /// The factors PEFT creates for a linear layer <c>[d_out, d_in]</c> with rank <paramref name="rank"/>:
    /// <c>(out_l, out_k) = factorization(d_out)</c>, <c>(in_m, in_n) = factorization(d_in)</c>; w1 is low-rank
    /// (<c>lokr_w1_a·lokr_w1_b</c>) only when <c>decompose_both</c> and <c>r &lt; max(out_l, in_m) / 2</c>; w2 is low-rank
    /// when <c>r &lt; max(out_k, in_n) / 2</c>.
    /// </summary>
    public static LokrLayout Layout(int dOut, int dIn, int rank, bool decomposeBoth = false, int decomposeFactor = -1)
    {
        var (inM, inN) = Factorize(dIn, decomposeFactor);
        var (outL, outK) = Factorize(dOut, decomposeFactor);
        bool fullW1 = !(decomposeBoth && rank < Math.Max(outL, inM) / 2.0);
        bool fullW2 = !(rank < Math.Max(outK, inN) / 2.0);
        return new LokrLayout(new KroneckerShape(outL, inM, outK, inN), fullW1, fullW2);
    }
}

/// <summary>A LoKr module's factor shapes and which factors are stored low-rank.</summary>
/// <param name="FullW1">True: <c>lokr_w1 [out_l, in_m]</c>; false: <c>lokr_w1_a [out_l, r]</c> and <c>lokr_w1_b [r, in_m]</c>.</param>
/// <param name="FullW2">True: <c>lokr_w2 [out_k, in_n]</c>; false: <c>lokr_w2_a [out_k, r]</c> and <c>lokr_w2_b [r, in_n]</c>.</param>
public sealed record LokrLayout(KroneckerShape Shape, bool FullW1, bool FullW2);
