using System.Text.Json.Nodes;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>One entry of tokenizer.json's <c>added_tokens</c>: matched as a whole in the input text.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool LStrip, bool RStrip);

/// <summary>The parts of a Hugging Face tokenizer.json this server understands (a BPE model and its pipeline).</summary>
internal sealed class TokenizerJson
{
    public required string Path { get; init; }
    public required string ModelType { get; init; }
    public required IReadOnlyDictionary<string, int> Vocab { get; init; }
    public required IReadOnlyList<(string Left, string Right)> Merges { get; init; }
    public required bool ByteFallback { get; init; }
    public required bool IgnoreMerges { get; init; }
    public string? UnknownToken { get; init; }
    public required IReadOnlyList<AddedToken> AddedTokens { get; init; }
    public JsonNode? Normalizer { get; init; }
    public JsonNode? PreTokenizer { get; init; }
    public JsonNode? PostProcessor { get; init; }
    public JsonNode? Decoder { get; init; }

    public static TokenizerJson Read(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"tokenizer.json not found: '{path}'.", path);

        JsonNode root = JsonNode.Parse(File.ReadAllText(path))
            ?? throw new InvalidDataException($"{path}: empty JSON document.");
        JsonNode model = root["model"] ?? throw new InvalidDataException($"{path}: no 'model' section.");
        string type = model["type"]?.GetValue<string>()
            ?? throw new InvalidDataException($"{path}: model.type is missing.");
        if (type != "BPE")
            throw new InvalidDataException(
                $"{path}: model.type '{type}' is not supported; only BPE models (SentencePiece-style with byte_fallback, or byte-level) are.");

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (token, id) in model["vocab"]?.AsObject() ?? throw new InvalidDataException($"{path}: model.vocab is missing."))
            vocab[token] = id!.GetValue<int>();

        var merges = new List<(string, string)>();
        foreach (JsonNode? merge in model["merges"]?.AsArray() ?? [])
            merges.Add(ReadMerge(merge, path));

        var added = new List<AddedToken>();
        foreach (JsonNode? entry in root["added_tokens"]?.AsArray() ?? [])
        {
            added.Add(new AddedToken(
                entry!["id"]!.GetValue<int>(),
                entry["content"]!.GetValue<string>(),
                entry["special"]?.GetValue<bool>() ?? false,
                entry["lstrip"]?.GetValue<bool>() ?? false,
                entry["rstrip"]?.GetValue<bool>() ?? false));
        }

        return new TokenizerJson
        {
            Path = path,
            ModelType = type,
            Vocab = vocab,
            Merges = merges,
            ByteFallback = model["byte_fallback"]?.GetValue<bool>() ?? false,
            IgnoreMerges = model["ignore_merges"]?.GetValue<bool>() ?? false,
            UnknownToken = model["unk_token"]?.GetValue<string>(),
            AddedTokens = added,
            Normalizer = root["normalizer"],
            PreTokenizer = root["pre_tokenizer"],
            PostProcessor = root["post_processor"],
            Decoder = root["decoder"],
        };
    }

    /// <summary>Merges are "left right" strings (classic) or ["left", "right"] pairs (tokenizers ≥ 0.20).</summary>
    private static (string, string) ReadMerge(JsonNode? merge, string path)
    {
        if (merge is JsonArray pair && pair.Count == 2)
            return (pair[0]!.GetValue<string>(), pair[1]!.GetValue<string>());
        if (merge is JsonValue value && value.TryGetValue(out string? text))
        {
            int space = text.IndexOf(' ');
            if (space > 0 && space < text.Length - 1 && text.IndexOf(' ', space + 1) < 0)
                return (text[..space], text[(space + 1)..]);
        }
        throw new InvalidDataException($"{path}: malformed merge entry '{merge?.ToJsonString()}'.");
    }

    /// <summary>The node itself and, for <c>Sequence</c> nodes, its flattened children.</summary>
    public static IEnumerable<JsonNode> Flatten(JsonNode? node, string childrenKey)
    {
        if (node is null)
            yield break;
        if (TypeOf(node) == "Sequence")
        {
            foreach (JsonNode? child in node[childrenKey]?.AsArray() ?? [])
                foreach (JsonNode inner in Flatten(child, childrenKey))
                    yield return inner;
        }
        else
        {
            yield return node;
        }
    }

    public static string TypeOf(JsonNode node) => node["type"]?.GetValue<string>() ?? "";

    /// <summary>Reads a <c>pattern</c> object: <c>{"String": "..."}</c> or <c>{"Regex": "..."}</c>.</summary>
    public static (string Text, bool IsRegex) PatternOf(JsonNode node, string path)
    {
        JsonNode pattern = node["pattern"] ?? throw new InvalidDataException($"{path}: {TypeOf(node)} without a pattern.");
        if (pattern["String"] is JsonNode s)
            return (s.GetValue<string>(), false);
        if (pattern["Regex"] is JsonNode r)
            return (r.GetValue<string>(), true);
        throw new InvalidDataException($"{path}: {TypeOf(node)} pattern '{pattern.ToJsonString()}' is neither String nor Regex.");
    }
}
