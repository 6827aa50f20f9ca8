using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Modeling.Llama;

/// <summary>
/// One sequence's share of a forward step: <see cref="TokenCount"/> new tokens (a whole or partial prompt, or one
/// decode token) at positions <c>PastLength .. PastLength + TokenCount − 1</c>, written to KV slot <see cref="Slot"/>.
/// </summary>
public sealed record SequenceStep(int Slot, int PastLength, IReadOnlyList<int> Tokens, bool AllLogits = false)
{
    public int TokenCount => Tokens.Count;
}

/// <summary>
/// The packed token layout of one step: the tokens of all sequences back to back (no padding) for every
/// projection; attention is padded per sequence internally. Plain indices, built once per step.
/// </summary>
public sealed class ForwardBatch
{
    public ForwardBatch(IReadOnlyList<SequenceStep> sequences)
    {
        if (sequences.Count == 0) throw new ArgumentException("a forward step needs at least one sequence");
        Sequences = sequences;
        TokenStarts = new int[sequences.Count];
        int n = 0, maxT = 0, maxS = 0;
        for (int b = 0; b < sequences.Count; b++)
        {
            var s = sequences[b];
            if (s.TokenCount == 0) throw new ArgumentException($"sequence {b} of the step has no tokens");
            TokenStarts[b] = n;
            n += s.TokenCount;
            maxT = Math.Max(maxT, s.TokenCount);
            maxS = Math.Max(maxS, s.PastLength + s.TokenCount);
        }
        TokenCount = n;
        MaxNewTokens = maxT;
        MaxTotalLength = maxS;
    }

    public IReadOnlyList<SequenceStep> Sequences { get; }
    /// <summary>Index of each sequence's first token in the packed layout.</summary>
    public int[] TokenStarts { get; }
    public int TokenCount { get; }
    public int MaxNewTokens { get; }
    public int MaxTotalLength { get; }

    /// <summary>Packed rows whose logits the step returns: the last token of each sequence, or all of its tokens when <see cref="SequenceStep.AllLogits"/>.</summary>
    public IReadOnlyList<int> LogitRows()
    {
        var rows = new List<int>();
        for (int b = 0; b < Sequences.Count; b++)
        {
            var s = Sequences[b];
            if (s.AllLogits) for (int t = 0; t < s.TokenCount; t++) rows.Add(TokenStarts[b] + t);
            else rows.Add(TokenStarts[b] + s.TokenCount - 1);
        }
        return rows;
    }
}
