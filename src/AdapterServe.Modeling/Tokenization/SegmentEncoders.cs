using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>Encodes one stretch of text that holds no added token (Hugging Face normalizer + pre-tokenizer + model).</summary>
internal interface ISegmentEncoder
{
    /// <param name="atTextStart">The segment starts the input text (SentencePiece's "first" dummy-prefix scheme).</param>
    void Encode(string segment, bool atTextStart, List<int> ids);

    /// <summary>The bytes one model token stands for (for <see cref="ITextTokenizer.TokenText"/>).</summary>
    byte[] TokenBytes(string token);

    /// <summary>Ways in which this encoder knowingly departs from Hugging Face's pipeline.</summary>
    IReadOnlyList<string> Warnings => [];
}

/// <summary>
/// Llama-2/Mistral-style SentencePiece BPE with byte fallback, run by Microsoft.ML.Tokenizers' LlamaTokenizer over a
/// ModelProto built from tokenizer.json. The Hugging Face normalization ('▁' dummy prefix, spaces to '▁') is done
/// here per segment, as the Hugging Face pipeline does after splitting out added tokens.
/// </summary>
internal sealed class SentencePieceSegmentEncoder : ISegmentEncoder
{
    public const char Metaspace = '\u2581';

    /// <summary>
    /// When a segment gets the '▁' dummy prefix: the Prepend normalizer always adds it; the Metaspace pre-tokenizer
    /// adds it (always, or to the segment that starts the text) only where the segment does not begin with a space.
    /// </summary>
    private enum DummyPrefix { Always, AlwaysUnlessSpace, FirstUnlessSpace, Never }

    private readonly SentencePieceTokenizer _model;
    private readonly DummyPrefix _dummyPrefix;
    private readonly bool _splitOnMetaspace;

    private SentencePieceSegmentEncoder(SentencePieceTokenizer model, DummyPrefix dummyPrefix, bool splitOnMetaspace)
    {
        _model = model;
        _dummyPrefix = dummyPrefix;
        _splitOnMetaspace = splitOnMetaspace;
    }

    /// <summary>Null when the tokenizer is not SentencePiece-style (no byte fallback or no '▁' whitespace handling).</summary>
    public static SentencePieceSegmentEncoder? TryCreate(TokenizerJson json, IReadOnlyList<string?> pieces, int? bosId, int? eosId)
    {
        if (!json.ByteFallback)
            return null;
        (DummyPrefix prefix, bool split)? scheme = WhitespaceScheme(json);
        if (scheme is null)
            return null;

        var controlIds = json.AddedTokens.Select(t => t.Id).ToHashSet();
        int unknownId = json.Vocab.TryGetValue(json.UnknownToken ?? "<unk>", out int unk) ? unk : 0;
        byte[] proto = SentencePieceModelProto.Build(
            pieces, json.Merges, controlIds, unknownId, bosId ?? 1, eosId ?? 2, byteFallback: true);
        var model = LlamaTokenizer.Create(new MemoryStream(proto), addBeginOfSentence: false, addEndOfSentence: false);
        return new SentencePieceSegmentEncoder(model, scheme.Value.prefix, scheme.Value.split);
    }

    /// <summary>
    /// Either the classic normalizer (Prepend "▁" + Replace " " → "▁") or the newer Metaspace pre-tokenizer.
    /// </summary>
    private static (DummyPrefix, bool)? WhitespaceScheme(TokenizerJson json)
    {
        var normalizers = TokenizerJson.Flatten(json.Normalizer, "normalizers").ToList();
        var preTokenizers = TokenizerJson.Flatten(json.PreTokenizer, "pretokenizers").ToList();

        JsonNode? metaspace = preTokenizers.FirstOrDefault(p => TokenizerJson.TypeOf(p) == "Metaspace");
        if (metaspace is not null)
        {
            if (normalizers.Count > 0 || preTokenizers.Count > 1)
                throw Unsupported(json, "a Metaspace pre-tokenizer combined with other normalizers or pre-tokenizers");
            if ((metaspace["replacement"]?.GetValue<string>() ?? "\u2581") != "\u2581")
                throw Unsupported(json, "a Metaspace replacement other than '▁'");
            string scheme = metaspace["prepend_scheme"]?.GetValue<string>()
                ?? ((metaspace["add_prefix_space"]?.GetValue<bool>() ?? true) ? "always" : "never");
            DummyPrefix prefix = scheme switch
            {
                "always" => DummyPrefix.AlwaysUnlessSpace,
                "first" => DummyPrefix.FirstUnlessSpace,
                "never" => DummyPrefix.Never,
                _ => throw Unsupported(json, $"Metaspace prepend_scheme '{scheme}'"),
            };
            return (prefix, metaspace["split"]?.GetValue<bool>() ?? true);
        }

        bool replacesSpaces = false, prepends = false;
        foreach (JsonNode n in normalizers)
        {
            if (TokenizerJson.TypeOf(n) == "Prepend" && n["prepend"]?.GetValue<string>() == "\u2581")
                prepends = true;
            else if (TokenizerJson.TypeOf(n) == "Replace" && TokenizerJson.PatternOf(n, json.Path) == (" ", false)
                     && n["content"]?.GetValue<string>() == "\u2581")
                replacesSpaces = true;
            else
                return null;
        }
        if (!replacesSpaces)
            return null;
        if (preTokenizers.Count > 0)
            throw Unsupported(json, $"pre-tokenizer '{TokenizerJson.TypeOf(preTokenizers[0])}' after a SentencePiece normalizer");
        return (prepends ? DummyPrefix.Always : DummyPrefix.Never, false);
    }

    private static InvalidDataException Unsupported(TokenizerJson json, string what) =>
        new($"{json.Path}: SentencePiece-style tokenizer with {what} is not supported.");

    public void Encode(string segment, bool atTextStart, List<int> ids)
    {
        if (segment.Length == 0)
            return;
        string escaped = segment.Replace(' ', Metaspace);
        bool prefix = _dummyPrefix switch
        {
            DummyPrefix.Always => true,
            DummyPrefix.AlwaysUnlessSpace => escaped[0] != Metaspace,
            DummyPrefix.FirstUnlessSpace => atTextStart && escaped[0] != Metaspace,
            _ => false,
        };
        string normalized = prefix ? Metaspace + escaped : escaped;
        foreach (string word in _splitOnMetaspace ? SplitBeforeMetaspace(normalized) : [normalized])
        {
            ids.AddRange(_model.EncodeToIds(
                word, addBeginningOfSentence: false, addEndOfSentence: false,
                considerPreTokenization: false, considerNormalization: false));
        }
    }

    /// <summary>Metaspace with split: every '▁' starts a new word (Hugging Face's MergedWithNext).</summary>
    private static IEnumerable<string> SplitBeforeMetaspace(string text)
    {
        int start = 0;
        for (int i = 1; i < text.Length; i++)
        {
            if (text[i] == Metaspace)
            {
                yield return text[start..i];
                start = i;
            }
        }
        yield return text[start..];
    }

    public byte[] TokenBytes(string token) =>
        SentencePieceModelProto.IsByteToken(token)
            ? [Convert.ToByte(token.Substring(3, 2), 16)]
            : Encoding.UTF8.GetBytes(token.Replace(Metaspace, ' '));
}

/// <summary>
/// Byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM): Hugging Face's split regexes run through Microsoft.ML.Tokenizers'
/// RegexPreTokenizer and each piece through its BpeTokenizer with ByteLevel = true.
/// </summary>
internal sealed class ByteLevelSegmentEncoder : ISegmentEncoder
{
    /// <summary>The GPT-2 split regex that the ByteLevel pre-tokenizer applies when its use_regex is true.</summary>
    public const string Gpt2SplitPattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private readonly BpeTokenizer _bpe;
    private readonly IReadOnlyList<RegexPreTokenizer> _splits;
    private readonly IReadOnlyDictionary<string, int> _vocab;
    private readonly bool _ignoreMerges;
    private readonly bool _addPrefixSpace;
    private readonly NormalizationForm? _normalization;

    private ByteLevelSegmentEncoder(BpeTokenizer bpe, IReadOnlyList<RegexPreTokenizer> splits, IReadOnlyDictionary<string, int> vocab,
        bool ignoreMerges, bool addPrefixSpace, NormalizationForm? normalization)
    {
        _bpe = bpe;
        _splits = splits;
        _vocab = vocab;
        _ignoreMerges = ignoreMerges;
        _addPrefixSpace = addPrefixSpace;
        _normalization = normalization;
    }

    /// <summary>Null when the pre-tokenizer has no ByteLevel step.</summary>
    public static ByteLevelSegmentEncoder? TryCreate(TokenizerJson json)
    {
        var preTokenizers = TokenizerJson.Flatten(json.PreTokenizer, "pretokenizers").ToList();
        JsonNode? byteLevel = preTokenizers.FirstOrDefault(p => TokenizerJson.TypeOf(p) == "ByteLevel");
        if (byteLevel is null)
            return null;

        var splits = new List<RegexPreTokenizer>();
        foreach (JsonNode step in preTokenizers)
        {
            switch (TokenizerJson.TypeOf(step))
            {
                case "Split":
                    string behavior = step["behavior"]?.GetValue<string>() ?? "";
                    if (behavior != "Isolated" || (step["invert"]?.GetValue<bool>() ?? false))
                        throw new InvalidDataException($"{json.Path}: Split pre-tokenizer with behavior '{behavior}' (or inverted) is not supported; only Isolated is.");
                    var (text, isRegex) = TokenizerJson.PatternOf(step, json.Path);
                    splits.Add(SplitOn(isRegex ? text : Regex.Escape(text), json.Path));
                    break;
                case "ByteLevel":
                    if (step["use_regex"]?.GetValue<bool>() ?? true)
                        splits.Add(SplitOn(Gpt2SplitPattern, json.Path));
                    break;
                default:
                    throw new InvalidDataException($"{json.Path}: pre-tokenizer '{TokenizerJson.TypeOf(step)}' is not supported with byte-level BPE.");
            }
        }

        NormalizationForm? normalization = null;
        var warnings = new List<string>();
        foreach (JsonNode n in TokenizerJson.Flatten(json.Normalizer, "normalizers"))
        {
            normalization = TokenizerJson.TypeOf(n) switch
            {
                "NFC" => NormalizationForm.FormC,
                "NFD" => NormalizationForm.FormD,
                "NFKC" => NormalizationForm.FormKC,
                "NFKD" => NormalizationForm.FormKD,
                _ => throw new InvalidDataException($"{json.Path}: normalizer {n.ToJsonString()} is not supported with byte-level BPE."),
            };
        }
        if (normalization is { } form && !UnicodeNormalizationWorks(form))
        {
            warnings.Add($"{json.Path}: the {TokenizerJson.TypeOf(json.Normalizer!)} normalizer needs ICU, which this process runs without "
                         + "(InvariantGlobalization); text is encoded as given, so ids differ from Hugging Face's for text not already in that form.");
            normalization = null;
        }

        var bpe = BpeTokenizer.Create(new BpeOptions(json.Vocab)
        {
            Merges = json.Merges.Select(m => m.Left + " " + m.Right),
            ByteLevel = true,
        });
        return new ByteLevelSegmentEncoder(bpe, splits, json.Vocab, json.IgnoreMerges,
            byteLevel["add_prefix_space"]?.GetValue<bool>() ?? false, normalization) { Warnings = warnings };
    }

    /// <summary>Under InvariantGlobalization .NET leaves non-ASCII text unnormalized instead of failing.</summary>
    private static bool UnicodeNormalizationWorks(NormalizationForm form) => form switch
    {
        NormalizationForm.FormC or NormalizationForm.FormKC => "e\u0301".Normalize(form) == "\u00e9",
        _ => "\u00e9".Normalize(form) == "e\u0301",
    };

    public IReadOnlyList<string> Warnings { get; private init; } = [];

    private static RegexPreTokenizer SplitOn(string pattern, string path)
    {
        try
        {
            return new RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant), specialTokens: null);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{path}: split regex '{pattern}' is not valid .NET regex syntax: {e.Message}", e);
        }
    }

    public void Encode(string segment, bool atTextStart, List<int> ids)
    {
        if (segment.Length == 0)
            return;
        string text = _normalization is { } form ? segment.Normalize(form) : segment;
        if (_addPrefixSpace && !text.StartsWith(' '))
            text = " " + text;

        IEnumerable<string> pieces = [text];
        foreach (RegexPreTokenizer split in _splits)
            pieces = pieces.SelectMany(p => Isolate(split, p)).ToList();

        foreach (string piece in pieces)
        {
            if (_ignoreMerges && _vocab.TryGetValue(ByteLevelAlphabet.Encode(piece), out int whole))
                ids.Add(whole);
            else
                ids.AddRange(_bpe.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
        }
    }

    /// <summary>Hugging Face's Isolated split: every match is a piece, and so is any text between matches.</summary>
    private static IEnumerable<string> Isolate(RegexPreTokenizer split, string text)
    {
        int end = 0;
        foreach ((int offset, int length) in split.PreTokenize(text))
        {
            if (offset > end)
                yield return text[end..offset];
            yield return text.Substring(offset, length);
            end = offset + length;
        }
        if (end < text.Length)
            yield return text[end..];
    }

    public byte[] TokenBytes(string token)
    {
        var bytes = new List<byte>(token.Length);
        ByteLevelAlphabet.AppendBytes(token, bytes);
        return [.. bytes];
    }
}
