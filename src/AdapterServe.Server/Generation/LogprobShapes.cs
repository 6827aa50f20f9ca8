using System.Text;
using AdapterServe.Engine;
using AdapterServe.Server.OpenAI;

namespace AdapterServe.Server.Generation;

/// <summary>
/// The legacy completions logprobs of one choice, built token by token: parallel lists of token strings, logprobs,
/// top-alternative maps and text offsets (the running sum of the token strings' lengths).
/// </summary>
internal sealed class LegacyLogprobs
{
    private readonly List<string> _tokens = [];
    private readonly List<float?> _logprobs = [];
    private readonly List<IReadOnlyDictionary<string, float>?> _top = [];
    private readonly List<int> _offsets = [];
    private int _offset;

    /// <summary>Adds one token; <paramref name="logprob"/> is null for the first prompt token (nothing predicts it). Returns the entry alone (a stream chunk's logprobs).</summary>
    public CompletionLogprobs Add(string token, TokenLogprob? logprob)
    {
        int start = _tokens.Count;
        AddCore(token, logprob);
        return Slice(start);
    }

    /// <summary>Adds the echoed prompt tokens; returns them as one entry list.</summary>
    public CompletionLogprobs AddPrompt(IReadOnlyList<int> promptIds, IReadOnlyList<TokenLogprob?>? promptLogprobs, Func<int, string> tokenText)
    {
        int start = _tokens.Count;
        for (int i = 0; i < promptIds.Count; i++)
        {
            var lp = promptLogprobs is not null && i < promptLogprobs.Count ? promptLogprobs[i] : null;
            AddCore(lp?.Token ?? tokenText(promptIds[i]), lp);
        }
        return Slice(start);
    }

    public CompletionLogprobs Build() => Slice(0);

    private void AddCore(string token, TokenLogprob? logprob)
    {
        _tokens.Add(token);
        _logprobs.Add(logprob is null ? null : Finite(logprob.Logprob));
        _top.Add(logprob is null ? null : TopMap(logprob));
        _offsets.Add(_offset);
        _offset += token.Length;
    }

    private CompletionLogprobs Slice(int start) => new(
        _tokens.GetRange(start, _tokens.Count - start),
        _logprobs.GetRange(start, _logprobs.Count - start),
        _top.GetRange(start, _top.Count - start),
        _offsets.GetRange(start, _offsets.Count - start));

    /// <summary>The alternatives, most likely first, plus the chosen token (OpenAI: up to logprobs + 1 entries); equal strings keep the higher logprob.</summary>
    private static Dictionary<string, float> TopMap(TokenLogprob lp)
    {
        var map = new Dictionary<string, float>();
        foreach (var t in lp.Top)
            if (!map.TryGetValue(t.Token, out float existing) || existing < t.Logprob) map[t.Token] = Finite(t.Logprob);
        map.TryAdd(lp.Token, Finite(lp.Logprob));
        return map;
    }

    /// <summary>−∞ (a token the sampler can never pick) cannot travel in JSON; like vLLM, report −9999.</summary>
    public static float Finite(float logprob) => float.IsFinite(logprob) ? logprob : -9999f;
}

internal static class ChatLogprobShapes
{
    public static ChatTokenLogprob Of(TokenLogprob lp) => new(
        lp.Token, LegacyLogprobs.Finite(lp.Logprob), Bytes(lp.Token),
        lp.Top.Select(t => new ChatTopLogprob(t.Token, LegacyLogprobs.Finite(t.Logprob), Bytes(t.Token))).ToList());

    private static IReadOnlyList<int> Bytes(string token) => Encoding.UTF8.GetBytes(token).Select(b => (int)b).ToList();
}
