using AdapterServe.Modeling.Tokenization;

namespace AdapterServe.Bench.Driving;

/// <summary>
/// Prompts of random ordinary (non-special) token ids from a seeded generator, drawn from the ids the tokenizer
/// knows (a synthetic model's vocabulary may be larger than its small generated tokenizer).
/// </summary>
public sealed class Prompts(ITextTokenizer tokenizer, int vocabSize, int seed)
{
    private readonly Random _random = new(seed);
    private readonly int[] _ordinary = Enumerable.Range(0, Math.Min(vocabSize, tokenizer.VocabSize)).Where(id => !tokenizer.IsSpecial(id)).ToArray();

    public IReadOnlyList<int> Next(int length)
    {
        if (_ordinary.Length == 0) throw new BenchException("the tokenizer marks every id as special: no prompt can be built");
        var ids = new int[length];
        for (int i = 0; i < length; i++) ids[i] = _ordinary[_random.Next(_ordinary.Length)];
        return ids;
    }
}
