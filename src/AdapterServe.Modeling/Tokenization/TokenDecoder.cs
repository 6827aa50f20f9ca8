using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>
/// Hugging Face's decoder pipeline (tokenizer.json <c>decoder</c>): each step maps the list of token strings to a
/// new list, and the result is their concatenation. Invalid UTF-8 becomes U+FFFD per maximal invalid subsequence
/// (Hugging Face's ByteFallback step instead replaces every byte of an invalid run; valid text decodes the same).
/// </summary>
internal sealed class TokenDecoder
{
    private readonly IReadOnlyList<Func<List<string>, List<string>>> _steps;

    private TokenDecoder(IReadOnlyList<Func<List<string>, List<string>>> steps) => _steps = steps;

    public static TokenDecoder FromJson(JsonNode? decoder, string path)
    {
        var steps = new List<Func<List<string>, List<string>>>();
        foreach (JsonNode step in TokenizerJson.Flatten(decoder, "decoders"))
            steps.Add(Step(step, path));
        return new TokenDecoder(steps);
    }

    public string Decode(IEnumerable<string> tokens)
    {
        List<string> list = tokens.ToList();
        foreach (var step in _steps)
            list = step(list);
        return string.Concat(list);
    }

    private static Func<List<string>, List<string>> Step(JsonNode step, string path)
    {
        switch (TokenizerJson.TypeOf(step))
        {
            case "Replace":
            {
                var (pattern, isRegex) = TokenizerJson.PatternOf(step, path);
                string content = step["content"]?.GetValue<string>() ?? "";
                if (!isRegex)
                    return tokens => tokens.ConvertAll(t => t.Replace(pattern, content, StringComparison.Ordinal));
                var regex = new Regex(pattern, RegexOptions.CultureInvariant);
                return tokens => tokens.ConvertAll(t => regex.Replace(t, content));
            }
            case "ByteFallback":
                return ByteFallback;
            case "Fuse":
                return tokens => [string.Concat(tokens)];
            case "Strip":
            {
                string content = step["content"]?.GetValue<string>() ?? " ";
                int start = step["start"]?.GetValue<int>() ?? 0;
                int stop = step["stop"]?.GetValue<int>() ?? 0;
                return tokens => tokens.ConvertAll(t => Strip(t, content, start, stop));
            }
            case "ByteLevel":
                return tokens =>
                {
                    var bytes = new List<byte>();
                    foreach (string t in tokens)
                        ByteLevelAlphabet.AppendBytes(t, bytes);
                    return [Encoding.UTF8.GetString(bytes.ToArray())];
                };
            case "Metaspace":
            {
                string replacement = step["replacement"]?.GetValue<string>() ?? "\u2581";
                string scheme = step["prepend_scheme"]?.GetValue<string>()
                    ?? ((step["add_prefix_space"]?.GetValue<bool>() ?? true) ? "always" : "never");
                return tokens => tokens.Select((t, i) =>
                {
                    string text = t.Replace(replacement, " ", StringComparison.Ordinal);
                    return i == 0 && scheme != "never" && text.StartsWith(' ') ? text[1..] : text;
                }).ToList();
            }
            default:
                throw new InvalidDataException($"{path}: decoder '{TokenizerJson.TypeOf(step)}' is not supported.");
        }
    }

    /// <summary>Runs of "&lt;0xHH&gt;" tokens become the text their bytes spell.</summary>
    private static List<string> ByteFallback(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var run = new List<byte>();
        foreach (string t in tokens)
        {
            if (SentencePieceModelProto.IsByteToken(t))
            {
                run.Add(Convert.ToByte(t.Substring(3, 2), 16));
                continue;
            }
            Flush();
            result.Add(t);
        }
        Flush();
        return result;

        void Flush()
        {
            if (run.Count == 0)
                return;
            result.Add(Encoding.UTF8.GetString(run.ToArray()));
            run.Clear();
        }
    }

    private static string Strip(string token, string content, int start, int stop)
    {
        if (content.Length != 1)
            return token;
        char c = content[0];
        int from = 0, to = token.Length;
        while (from < to && from < start && token[from] == c)
            from++;
        while (to > from && token.Length - to < stop && token[to - 1] == c)
            to--;
        return token[from..to];
    }
}
