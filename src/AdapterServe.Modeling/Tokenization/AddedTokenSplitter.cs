using System.Text.RegularExpressions;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>
/// Finds added tokens (<c>added_tokens</c> of tokenizer.json) in the input text, leftmost and longest first, as
/// Hugging Face's AddedVocabulary does; <c>lstrip</c>/<c>rstrip</c> tokens also swallow the whitespace beside them.
/// </summary>
internal sealed class AddedTokenSplitter
{
    private readonly Regex? _regex;
    private readonly IReadOnlyList<AddedToken> _tokens;
    private readonly int[] _groupNumbers = [];

    public AddedTokenSplitter(IReadOnlyList<AddedToken> tokens)
    {
        _tokens = tokens.Where(t => t.Content.Length > 0).OrderByDescending(t => t.Content.Length).ToList();
        if (_tokens.Count == 0)
            return;
        IEnumerable<string> alternatives = _tokens.Select((t, i) =>
            $"(?<t{i}>{(t.LStrip ? @"\s*" : "")}{Regex.Escape(t.Content)}{(t.RStrip ? @"\s*" : "")})");
        _regex = new Regex(string.Join("|", alternatives), RegexOptions.CultureInvariant | RegexOptions.ExplicitCapture);
        _groupNumbers = Enumerable.Range(0, _tokens.Count).Select(i => _regex.GroupNumberFromName($"t{i}")).ToArray();
    }

    /// <summary>The text cut into plain segments (Id null) and added tokens (Id set), in order.</summary>
    public IEnumerable<(int Start, string Text, int? Id)> Split(string text)
    {
        if (_regex is null)
        {
            if (text.Length > 0)
                yield return (0, text, null);
            yield break;
        }

        int end = 0;
        for (Match m = _regex.Match(text); m.Success; m = m.NextMatch())
        {
            if (m.Index > end)
                yield return (end, text[end..m.Index], null);
            yield return (m.Index, m.Value, TokenOf(m).Id);
            end = m.Index + m.Length;
        }
        if (end < text.Length)
            yield return (end, text[end..], null);
    }

    private AddedToken TokenOf(Match m)
    {
        for (int i = 0; i < _tokens.Count; i++)
            if (m.Groups[_groupNumbers[i]].Success)
                return _tokens[i];
        throw new InvalidOperationException("Added-token match without a group.");
    }
}
