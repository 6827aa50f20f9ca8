using System.Text;
using AdapterServe.Modeling.Tokenization;

namespace AdapterServe.Engine;

/// <summary>
/// Turns one choice's tokens into printable text: incremental detokenization (never half a UTF-8 character)
/// and stop strings (never emitted; text that could still become one is held back).
/// </summary>
public sealed class OutputText(ITextTokenizer tokenizer, IReadOnlyList<int> promptIds, IReadOnlyList<string> stopStrings)
{
    private readonly IncrementalDetokenizer _detokenizer = new(tokenizer, promptIds);
    private readonly StringBuilder _text = new();
    private readonly int _holdBack = stopStrings.Count == 0 ? 0 : stopStrings.Max(s => s.Length) - 1;
    private int _emitted;

    public bool Stopped { get; private set; }

    /// <summary>Adds a token; returns the newly printable text.</summary>
    public string Push(int tokenId) => Release(_detokenizer.Push(tokenId), final: false);

    /// <summary>Releases whatever is held back (end of generation).</summary>
    public string Flush() => Stopped ? "" : Release(_detokenizer.Flush(), final: true);

    private string Release(string piece, bool final)
    {
        int searchFrom = Math.Max(0, _emitted - _holdBack);
        _text.Append(piece);
        int end = final ? _text.Length : Math.Max(_emitted, _text.Length - _holdBack);
        if (stopStrings.Count > 0)
        {
            string tail = _text.ToString(searchFrom, _text.Length - searchFrom);
            int first = -1;
            foreach (var stop in stopStrings)
            {
                int at = tail.IndexOf(stop, StringComparison.Ordinal);
                if (at >= 0 && (first < 0 || at < first)) first = at;
            }
            if (first >= 0)
            {
                Stopped = true;
                end = searchFrom + first;
            }
        }
        if (end <= _emitted) return "";
        string delta = _text.ToString(_emitted, end - _emitted);
        _emitted = end;
        return delta;
    }
}
