using System.Text.Json.Nodes;

namespace AdapterServe.Modeling.Tokenization;

/// <summary>The parts of tokenizer_config.json the server uses. Absent file = all defaults.</summary>
internal sealed class TokenizerConfig
{
    public string? BosToken { get; init; }
    public string? EosToken { get; init; }
    public bool? AddBosToken { get; init; }
    public bool? AddEosToken { get; init; }
    public string? ChatTemplate { get; init; }

    public static TokenizerConfig Read(string path)
    {
        if (!File.Exists(path))
            return new TokenizerConfig();

        JsonNode root = JsonNode.Parse(File.ReadAllText(path))
            ?? throw new InvalidDataException($"{path}: empty JSON document.");
        return new TokenizerConfig
        {
            BosToken = TokenContent(root["bos_token"], "bos_token", path),
            EosToken = TokenContent(root["eos_token"], "eos_token", path),
            AddBosToken = root["add_bos_token"]?.GetValue<bool>(),
            AddEosToken = root["add_eos_token"]?.GetValue<bool>(),
            ChatTemplate = ReadChatTemplate(root["chat_template"], path),
        };
    }

    /// <summary>A special token is written as a plain string or as an AddedToken object with <c>content</c>.</summary>
    private static string? TokenContent(JsonNode? node, string key, string path) => node switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out string? s) => s,
        JsonObject o when o["content"] is JsonNode c => c.GetValue<string>(),
        _ => throw new InvalidDataException($"{path}: '{key}' must be a string or an object with 'content', found {node.ToJsonString()}."),
    };

    /// <summary><c>chat_template</c> is a string, or a list of named templates of which "default" is used.</summary>
    private static string? ReadChatTemplate(JsonNode? node, string path)
    {
        switch (node)
        {
            case null:
                return null;
            case JsonValue v when v.TryGetValue(out string? s):
                return s;
            case JsonArray named:
                foreach (JsonNode? entry in named)
                    if (entry?["name"]?.GetValue<string>() == "default")
                        return entry["template"]?.GetValue<string>();
                return null;
            default:
                throw new InvalidDataException($"{path}: 'chat_template' must be a string or a list of named templates.");
        }
    }
}
