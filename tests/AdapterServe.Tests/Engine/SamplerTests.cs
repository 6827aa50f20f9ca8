using AdapterServe.Engine;

namespace AdapterServe.Tests.Engine;

/// <summary>
/// The sampler ranks tokens without sorting the vocabulary; it must still draw what a full sort would: compared, draw
/// by draw with the same seed, with a reference that sorts every token whenever top-k or top-p needs a ranking
/// (temperature, top-k, top-p as OpenAI/vLLM define them).
/// </summary>
public class SamplerTests
{
    /// <summary>
    /// The reference: scale; without top-k and top-p, walk the cumulative softmax in id order; else sort the whole
    /// vocabulary (ties by id), cut at top-k, then the top-p nucleus, and walk in that order.
    /// </summary>
    static int FullSortDraw(float[] logits, SamplingParams p, Random random)
    {
        int v = logits.Length;
        var scaled = logits.Select(l => l / p.Temperature).ToArray();
        bool ranked = p.TopK > 0 || p.TopP < 1;
        var order = ranked ? Enumerable.Range(0, v).OrderByDescending(i => scaled[i]).ThenBy(i => i).ToArray() : Enumerable.Range(0, v).ToArray();
        int keep = p.TopK > 0 ? Math.Min(p.TopK, v) : v;
        double max = scaled.Max();
        var probs = order.Take(keep).Select(i => Math.Exp(scaled[i] - max)).ToArray();
        double sum = probs.Sum();
        if (p.TopP < 1)
        {
            double cumulative = 0;
            for (int i = 0; i < keep; i++)
            {
                cumulative += probs[i] / sum;
                if (cumulative >= p.TopP) { keep = i + 1; break; }
            }
            sum = probs.Take(keep).Sum();
        }
        double u = random.NextDouble() * sum, acc = 0;
        for (int i = 0; i < keep; i++)
        {
            acc += probs[i];
            if (u < acc) return order[i];
        }
        return order[keep - 1];
    }

    [Theory]
    [InlineData(1.0f, 0, 1.0f)]      // the OpenAI default: the whole vocabulary
    [InlineData(0.7f, 0, 0.9f)]      // nucleus only
    [InlineData(1.3f, 50, 1.0f)]     // top-k only
    [InlineData(0.8f, 40, 0.95f)]    // both
    [InlineData(1.0f, 5000, 0.5f)]   // a wide top-k cut by a narrow nucleus
    public void Draws_equal_a_full_sort_of_the_vocabulary(float temperature, int topK, float topP)
    {
        const int vocab = 4099, draws = 300;
        var rng = new Random(7);
        // Peaked logits like a trained model's, with ties (a coarse grid) so the tie order by id is exercised.
        var peaked = Enumerable.Range(0, vocab).Select(_ => MathF.Round((float)(rng.NextDouble() * 4 - 2), 1)).ToArray();
        for (int i = 0; i < 12; i++) peaked[rng.Next(vocab)] = 6 + i % 3;
        var flat = Enumerable.Range(0, vocab).Select(_ => MathF.Round((float)(rng.NextDouble() * 0.5), 2)).ToArray();
        foreach (var logits in new[] { peaked, flat })
        {
            var p = new SamplingParams { Temperature = temperature, TopK = topK, TopP = topP, Seed = 42 };
            var sampler = new Sampler(p, choiceIndex: 1);
            var reference = new Random(unchecked((int)(42L * 1_000_003 + 1)));    // the sampler's documented seeding
            var got = Enumerable.Range(0, draws).Select(_ => sampler.Sample(logits)).ToArray();
            var expected = Enumerable.Range(0, draws).Select(_ => FullSortDraw(logits, p, reference)).ToArray();
            Assert.Equal(expected, got);
            Assert.True(got.Distinct().Count() > 1, "the draws should vary");
        }
    }

    [Fact]
    public void Top_k_of_one_and_zero_temperature_are_the_argmax()
    {
        var logits = new[] { 0.5f, 3f, -1f, 3f, 2.9f };
        Assert.Equal(1, new Sampler(new SamplingParams { Temperature = 0.8f, TopK = 1 }, 0).Sample(logits));
        Assert.Equal(1, new Sampler(new SamplingParams { Temperature = 0 }, 0).Sample(logits));
    }
}
