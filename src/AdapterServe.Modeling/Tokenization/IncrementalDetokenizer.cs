namespace AdapterServe.Modeling.Tokenization;

/// <summary>
/// Turns generated tokens into text chunks as they arrive (vLLM's prefix/read offsets). Decoding tokens one at a
/// time would lose SentencePiece's leading spaces and split multi-byte characters, so each step decodes a short
/// window of earlier tokens with and without the new ones and emits the difference; while the decoded tail ends in
/// U+FFFD (an incomplete UTF-8 character) nothing is emitted. The concatenation of all chunks plus
/// <see cref="Flush"/> equals the decode of prompt + generated tokens, minus the decode of the prompt.
/// Not thread-safe: one instance per sequence.
/// </summary>
public sealed class IncrementalDetokenizer
{
    /// <summary>How many prompt tokens the first window reaches back (vLLM uses 5).</summary>
    private const int PromptContext = 5;
    private const char Replacement = '\uFFFD';

    private readonly ITextTokenizer _tokenizer;
    private readonly bool _skipSpecialTokens;
    private readonly List<int> _ids;
    private int _prefixOffset;
    private int _readOffset;

    public IncrementalDetokenizer(ITextTokenizer tokenizer, IReadOnlyList<int> promptIds, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(promptIds);
        _tokenizer = tokenizer;
        _skipSpecialTokens = skipSpecialTokens;
        _ids = [.. promptIds];
        _readOffset = _ids.Count;
        _prefixOffset = Math.Max(_ids.Count - PromptContext, 0);
    }

    /// <summary>Adds one generated token; returns the text that became printable (often empty).</summary>
    public string Push(int tokenId)
    {
        _ids.Add(tokenId);
        string prefixText = Decode(_prefixOffset, _readOffset);
        string newText = Decode(_prefixOffset, _ids.Count);
        if (newText.Length <= prefixText.Length || newText[^1] == Replacement)
            return "";
        return Advance(prefixText, newText);
    }

    /// <summary>Releases whatever is still held back (an incomplete character at the end shows as U+FFFD).</summary>
    public string Flush()
    {
        string prefixText = Decode(_prefixOffset, _readOffset);
        string newText = Decode(_prefixOffset, _ids.Count);
        return newText.Length > prefixText.Length ? Advance(prefixText, newText) : "";
    }

    private string Advance(string prefixText, string newText)
    {
        _prefixOffset = _readOffset;
        _readOffset = _ids.Count;
        return newText[prefixText.Length..];
    }

    private string Decode(int from, int to) =>
        from == to ? "" : _tokenizer.Decode(_ids.GetRange(from, to - from), _skipSpecialTokens);
}
