using System.Text;
using System.Text.Json.Nodes;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>
/// A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) on Microsoft.ML.Tokenizers: SentencePiece BPE
/// with byte fallback (Llama-2, Mistral) or byte-level BPE (Llama-3, Qwen2, SmolLM, GPT-2). Added tokens are cut
/// out of the text first; each remaining segment goes through the model's normalizer, pre-tokenizer and BPE.
/// Immutable after <see cref="Load"/>, so safe to share between threads.
/// </summary>
public sealed class HfTokenizer : ITextTokenizer
{
    private readonly string?[] _tokenOfId;
    private readonly bool[] _isSpecial;
    private readonly HashSet<int> _addedIds;
    private readonly Dictionary<string, int> _idOfToken;
    private readonly AddedTokenSplitter _splitter;
    private readonly ISegmentEncoder _encoder;
    private readonly TokenDecoder _decoder;
    private readonly IReadOnlyList<int> _prefixIds;
    private readonly IReadOnlyList<int> _suffixIds;
    private readonly string? _bosToken;
    private readonly string? _eosToken;
    private readonly ChatTemplate? _chatTemplate;
    private readonly string? _chatTemplateError;

    private HfTokenizer(
        string?[] tokenOfId, bool[] isSpecial, HashSet<int> addedIds, Dictionary<string, int> idOfToken,
        AddedTokenSplitter splitter, ISegmentEncoder encoder, TokenDecoder decoder,
        IReadOnlyList<int> prefixIds, IReadOnlyList<int> suffixIds,
        string? bosToken, int? bosId, string? eosToken, IReadOnlyList<int> eosIds,
        ChatTemplate? chatTemplate, string? chatTemplateError, bool isSentencePiece)
    {
        _tokenOfId = tokenOfId;
        _isSpecial = isSpecial;
        _addedIds = addedIds;
        _idOfToken = idOfToken;
        _splitter = splitter;
        _encoder = encoder;
        _decoder = decoder;
        _prefixIds = prefixIds;
        _suffixIds = suffixIds;
        _bosToken = bosToken;
        BosTokenId = bosId;
        _eosToken = eosToken;
        EosTokenIds = eosIds;
        _chatTemplate = chatTemplate;
        _chatTemplateError = chatTemplateError;
        IsSentencePiece = isSentencePiece;
    }

    /// <summary>Highest token id + 1, added tokens included.</summary>
    public int VocabSize => _tokenOfId.Length;

    public int? BosTokenId { get; }

    public IReadOnlyList<int> EosTokenIds { get; }

    /// <summary>True for SentencePiece-style BPE with byte fallback, false for byte-level BPE.</summary>
    public bool IsSentencePiece { get; }

    /// <summary>Ways in which this tokenizer knowingly departs from Hugging Face's (to be logged at start-up).</summary>
    public IReadOnlyList<string> LoadWarnings => _encoder.Warnings;

    /// <summary>The built-in chat template family in use ("llama-2", "llama-3", "llama-3.1", "chatml"), or null.</summary>
    public string? ChatTemplateName => _chatTemplate?.Name;

    /// <summary>Loads <c>tokenizer.json</c> and (if present) <c>tokenizer_config.json</c> from a model directory.</summary>
    /// <param name="extraEosTokenIds">Further ids that end generation (from generation_config.json / config.json).</param>
    /// <exception cref="InvalidDataException">The tokenizer is of a kind this class does not support.</exception>
    public static HfTokenizer Load(string modelDirectory, IReadOnlyList<int>? extraEosTokenIds = null)
    {
        string jsonPath = Path.Combine(modelDirectory, "tokenizer.json");
        TokenizerJson json = TokenizerJson.Read(jsonPath);
        TokenizerConfig config = TokenizerConfig.Read(Path.Combine(modelDirectory, "tokenizer_config.json"));

        var idOfToken = new Dictionary<string, int>(json.Vocab, StringComparer.Ordinal);
        foreach (AddedToken t in json.AddedTokens)
            idOfToken[t.Content] = t.Id;
        int vocabSize = idOfToken.Values.DefaultIfEmpty(-1).Max() + 1;
        var tokenOfId = new string?[vocabSize];
        foreach (var (token, id) in json.Vocab)
            tokenOfId[id] = token;
        var pieces = (string?[])tokenOfId.Clone(); // the model's own vocabulary, before added tokens
        foreach (AddedToken t in json.AddedTokens)
            tokenOfId[t.Id] = t.Content;

        int? IdOf(string? token, string key) => token is null ? null
            : idOfToken.TryGetValue(token, out int id) ? id
            : throw new InvalidDataException($"{jsonPath}: {key} '{token}' of tokenizer_config.json is not in the vocabulary.");
        int? bosId = IdOf(config.BosToken, "bos_token");
        int? eosId = IdOf(config.EosToken, "eos_token");

        var isSpecial = new bool[vocabSize];
        foreach (AddedToken t in json.AddedTokens.Where(t => t.Special))
            isSpecial[t.Id] = true;
        foreach (int? id in new[] { bosId, eosId })
            if (id is int special)
                isSpecial[special] = true;

        ISegmentEncoder encoder = (ISegmentEncoder?)SentencePieceSegmentEncoder.TryCreate(json, pieces, bosId, eosId)
            ?? ByteLevelSegmentEncoder.TryCreate(json)
            ?? throw new InvalidDataException(
                $"{jsonPath}: unsupported BPE tokenizer (byte_fallback={json.ByteFallback}, normalizer={json.Normalizer?.ToJsonString() ?? "null"}, "
                + $"pre_tokenizer={json.PreTokenizer?.ToJsonString() ?? "null"}); supported are SentencePiece-style BPE with byte_fallback and "
                + "'▁' whitespace (Llama-2, Mistral) and byte-level BPE with a ByteLevel pre-tokenizer (GPT-2, Llama-3, Qwen2).");
        bool isSentencePiece = encoder is SentencePieceSegmentEncoder;

        var (templatePrefix, templateSuffix) = PostProcessorTemplate(json);
        IReadOnlyList<int> Wrap(bool? add, int? id, string key, IReadOnlyList<int>? fromTemplate, IReadOnlyList<int> fallback) => add switch
        {
            true => [id ?? throw new InvalidDataException($"{jsonPath}: tokenizer_config.json sets add_{key}_token but has no {key}_token.")],
            false => [],
            null => fromTemplate ?? fallback,
        };
        // Llama-2's LlamaTokenizerFast adds bos unless told otherwise; other tokenizers follow their post_processor.
        IReadOnlyList<int> prefix = Wrap(config.AddBosToken, bosId, "bos", templatePrefix,
            isSentencePiece && bosId is int b ? [b] : []);
        IReadOnlyList<int> suffix = Wrap(config.AddEosToken, eosId, "eos", templateSuffix, []);

        var eosIds = new List<int>();
        foreach (int id in (eosId is int e ? new[] { e } : []).Concat(extraEosTokenIds ?? []))
            if (!eosIds.Contains(id))
                eosIds.Add(id);

        string? templateText = config.ChatTemplate;
        string jinjaPath = Path.Combine(modelDirectory, "chat_template.jinja");
        if (templateText is null && File.Exists(jinjaPath))
            templateText = File.ReadAllText(jinjaPath);
        var (template, templateError) = ChatTemplate.Resolve(templateText, idOfToken.ContainsKey);

        return new HfTokenizer(
            tokenOfId, isSpecial, json.AddedTokens.Select(t => t.Id).ToHashSet(), idOfToken,
            new AddedTokenSplitter(json.AddedTokens), encoder, TokenDecoder.FromJson(json.Decoder, jsonPath),
            prefix, suffix, config.BosToken, bosId, config.EosToken, eosIds,
            template, templateError is null ? null : $"The model's chat template cannot render conversations: {templateError}.", isSentencePiece);   // no server paths in client errors
    }

    /// <summary>The special ids a TemplateProcessing post-processor puts before and after a single sequence.</summary>
    private static (IReadOnlyList<int>? Prefix, IReadOnlyList<int>? Suffix) PostProcessorTemplate(TokenizerJson json)
    {
        foreach (JsonNode step in TokenizerJson.Flatten(json.PostProcessor, "processors"))
        {
            switch (TokenizerJson.TypeOf(step))
            {
                case "ByteLevel":
                    continue;
                case "TemplateProcessing":
                    var prefix = new List<int>();
                    var suffix = new List<int>();
                    bool afterSequence = false;
                    foreach (JsonNode? item in step["single"]?.AsArray() ?? [])
                    {
                        if (item?["Sequence"] is not null)
                        {
                            afterSequence = true;
                            continue;
                        }
                        string special = item?["SpecialToken"]?["id"]?.GetValue<string>()
                            ?? throw new InvalidDataException($"{json.Path}: unreadable TemplateProcessing item {item?.ToJsonString()}.");
                        JsonArray ids = step["special_tokens"]?[special]?["ids"]?.AsArray()
                            ?? throw new InvalidDataException($"{json.Path}: TemplateProcessing names '{special}' without its ids.");
                        (afterSequence ? suffix : prefix).AddRange(ids.Select(i => i!.GetValue<int>()));
                    }
                    return (prefix, suffix);
                default:
                    throw new InvalidDataException($"{json.Path}: post_processor '{TokenizerJson.TypeOf(step)}' is not supported.");
            }
        }
        return (null, null);
    }

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>();
        if (addSpecialTokens)
            ids.AddRange(_prefixIds);
        foreach (var (start, segment, id) in _splitter.Split(text))
        {
            if (id is int added)
                ids.Add(added);
            else
                _encoder.Encode(segment, atTextStart: start == 0, ids);
        }
        if (addSpecialTokens)
            ids.AddRange(_suffixIds);
        return ids;
    }

    /// <summary>Ids without a token (beyond the vocabulary) are skipped, as Hugging Face does.</summary>
    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var tokens = new List<string>(ids.Count);
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)_tokenOfId.Length || _tokenOfId[id] is not string token)
                continue;
            if (skipSpecialTokens && _isSpecial[id])
                continue;
            tokens.Add(token);
        }
        return _decoder.Decode(tokens);
    }

    /// <summary>
    /// The token's own text with its leading space (SentencePiece '▁' shown as ' '); a token whose bytes are not
    /// valid UTF-8 on their own is shown as OpenAI does, e.g. <c>bytes:\xe2\x80</c>. Empty for ids without a token.
    /// </summary>
    public string TokenText(int id)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(id);
        if (id >= _tokenOfId.Length || _tokenOfId[id] is not string token)
            return "";
        if (_addedIds.Contains(id))
            return token;
        byte[] bytes = _encoder.TokenBytes(token);
        try
        {
            return new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            return "bytes:" + string.Concat(bytes.Select(b => $"\\x{b:x2}"));
        }
    }

    public bool IsSpecial(int id) => (uint)id < (uint)_isSpecial.Length && _isSpecial[id];

    /// <summary>The id of a token string (vocabulary or added token), or null.</summary>
    public int? TokenId(string token) => _idOfToken.TryGetValue(token, out int id) ? id : null;

    /// <summary>
    /// Renders the chat with the built-in template matching the config's chat_template. The result already holds
    /// the template's special tokens (Llama-3 and Llama-2 put bos in it): encode it with <c>addSpecialTokens: false</c>.
    /// </summary>
    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (_chatTemplate is null)
            throw new ChatTemplateException(_chatTemplateError ?? "No chat template.");
        return _chatTemplate.Render(messages, addGenerationPrompt, _bosToken, _eosToken);
    }
}
