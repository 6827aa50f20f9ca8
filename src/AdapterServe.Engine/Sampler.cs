namespace AdapterServe.Engine;

/// <summary>
/// Picks the next token from one row of logits: greedy, or temperature → top-k → top-p → a draw from the
/// sequence's own seeded generator, so a seeded request gives the same tokens whatever else shares its batch.
/// </summary>
public sealed class Sampler(SamplingParams p, int choiceIndex)
{
    private readonly Random _random = p.Seed is long seed ? new Random(unchecked((int)(seed * 1_000_003 + choiceIndex))) : new Random();

    public bool IsGreedy => p.Temperature <= 0 || p.TopK == 1;

    public int Sample(ReadOnlySpan<float> logits)
    {
        if (IsGreedy) return ArgMax(logits);
        int v = logits.Length;
        var order = new int[v];
        for (int i = 0; i < v; i++) order[i] = i;
        var scaled = new float[v];
        float t = p.Temperature;
        for (int i = 0; i < v; i++) scaled[i] = logits[i] / t;
        // Sort descending by logit (stable on id for ties), then keep top-k and the top-p nucleus.
        Array.Sort(order, (a, b) => scaled[b].CompareTo(scaled[a]) is var c && c != 0 ? c : a.CompareTo(b));
        int keep = p.TopK > 0 ? Math.Min(p.TopK, v) : v;
        double max = scaled[order[0]], sum = 0;
        var probs = new double[keep];
        for (int i = 0; i < keep; i++) { probs[i] = Math.Exp(scaled[order[i]] - max); sum += probs[i]; }
        if (p.TopP < 1)
        {
            double cumulative = 0;
            for (int i = 0; i < keep; i++)
            {
                cumulative += probs[i] / sum;
                if (cumulative >= p.TopP) { keep = i + 1; break; }
            }
            sum = 0;
            for (int i = 0; i < keep; i++) sum += probs[i];
        }
        double u = _random.NextDouble() * sum, acc = 0;
        for (int i = 0; i < keep; i++)
        {
            acc += probs[i];
            if (u < acc) return order[i];
        }
        return order[keep - 1];
    }

    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
}
