using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace AdapterServe.Server.OpenAI;

/// <summary>
/// The <c>prompt</c> of a completion: one or more prompts, each either text or token ids.
/// <see cref="IsBatch"/> says whether the client sent a list of prompts (each with its own set of choices).
/// </summary>
[JsonConverter(typeof(PromptInputConverter))]
public sealed class PromptInput
{
    /// <summary>Exactly one of <see cref="Text"/> and <see cref="TokenIds"/> is set per prompt.</summary>
    public sealed record Item(string? Text, IReadOnlyList<int>? TokenIds);

    public required IReadOnlyList<Item> Items { get; init; }
    public required bool IsBatch { get; init; }

    public static PromptInput FromText(string text) => new() { Items = [new Item(text, null)], IsBatch = false };
}

internal sealed class PromptInputConverter : JsonConverter<PromptInput>
{
    private const string Shape = "'prompt' must be a string, an array of strings, an array of token ids, or an array of token-id arrays";

    public override PromptInput Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.String)
            return PromptInput.FromText(reader.GetString()!);
        if (reader.TokenType != JsonTokenType.StartArray)
            throw new InputShapeException(Shape + $", got {Describe(reader.TokenType)}.");

        var texts = new List<string>();
        var ids = new List<int>();
        var idLists = new List<IReadOnlyList<int>>();
        JsonTokenType? elementKind = null;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            var kind = reader.TokenType;
            if (elementKind is null) elementKind = kind;
            else if (elementKind != kind) throw new InputShapeException(Shape + "; its elements must all be of one kind.");
            switch (kind)
            {
                case JsonTokenType.String: texts.Add(reader.GetString()!); break;
                case JsonTokenType.Number: ids.Add(ReadTokenId(ref reader, $"prompt[{ids.Count}]")); break;
                case JsonTokenType.StartArray: idLists.Add(ReadIdArray(ref reader, idLists.Count)); break;
                default: throw new InputShapeException(Shape + $"; element {texts.Count + ids.Count + idLists.Count} is {Describe(kind)}.");
            }
        }
        return elementKind switch
        {
            null => throw new InputShapeException("'prompt' must not be an empty array."),
            JsonTokenType.String => new PromptInput { Items = texts.Select(t => new PromptInput.Item(t, null)).ToList(), IsBatch = true },
            JsonTokenType.Number => new PromptInput { Items = [new PromptInput.Item(null, ids)], IsBatch = false },
            _ => new PromptInput { Items = idLists.Select(l => new PromptInput.Item(null, l)).ToList(), IsBatch = true },
        };
    }

    private static IReadOnlyList<int> ReadIdArray(ref Utf8JsonReader reader, int promptIndex)
    {
        var ids = new List<int>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.Number)
                throw new InputShapeException(Shape + $"; prompt[{promptIndex}][{ids.Count}] is {Describe(reader.TokenType)}, not a token id.");
            ids.Add(ReadTokenId(ref reader, $"prompt[{promptIndex}][{ids.Count}]"));
        }
        if (ids.Count == 0) throw new InputShapeException($"'prompt[{promptIndex}]' must not be an empty array of token ids.");
        return ids;
    }

    private static int ReadTokenId(ref Utf8JsonReader reader, string where)
    {
        if (!reader.TryGetInt32(out int id) || id < 0)
            throw new InputShapeException($"'{where}' must be a non-negative integer token id, got {Encoding.UTF8.GetString(reader.ValueSpan)}.");
        return id;
    }

    internal static string Describe(JsonTokenType t) => t switch
    {
        JsonTokenType.StartObject => "an object",
        JsonTokenType.StartArray => "an array",
        JsonTokenType.String => "a string",
        JsonTokenType.Number => "a number",
        JsonTokenType.True or JsonTokenType.False => "a boolean",
        JsonTokenType.Null => "null",
        _ => t.ToString(),
    };

    public override void Write(Utf8JsonWriter writer, PromptInput value, JsonSerializerOptions options)
    {
        if (value.IsBatch) writer.WriteStartArray();
        foreach (var item in value.Items)
        {
            if (item.Text is not null) writer.WriteStringValue(item.Text);
            else
            {
                writer.WriteStartArray();
                foreach (int id in item.TokenIds!) writer.WriteNumberValue(id);
                writer.WriteEndArray();
            }
        }
        if (value.IsBatch) writer.WriteEndArray();
    }
}

/// <summary>The <c>stop</c> field: a string or an array of up to 4 strings.</summary>
[JsonConverter(typeof(StopInputConverter))]
public sealed class StopInput
{
    public required IReadOnlyList<string> Strings { get; init; }
}

internal sealed class StopInputConverter : JsonConverter<StopInput>
{
    public override StopInput Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.String) return new StopInput { Strings = [reader.GetString()!] };
        if (reader.TokenType != JsonTokenType.StartArray)
            throw new InputShapeException($"'stop' must be a string or an array of strings, got {PromptInputConverter.Describe(reader.TokenType)}.");
        var list = new List<string>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.String)
                throw new InputShapeException($"'stop[{list.Count}]' must be a string, got {PromptInputConverter.Describe(reader.TokenType)}.");
            list.Add(reader.GetString()!);
        }
        return new StopInput { Strings = list };
    }

    public override void Write(Utf8JsonWriter writer, StopInput value, JsonSerializerOptions options)
    {
        writer.WriteStartArray();
        foreach (var s in value.Strings) writer.WriteStringValue(s);
        writer.WriteEndArray();
    }
}

/// <summary>A chat message's <c>content</c>: a string or an array of text parts (joined without separator).</summary>
[JsonConverter(typeof(ChatContentConverter))]
public sealed class ChatContent
{
    public required string Text { get; init; }
}

internal sealed class ChatContentConverter : JsonConverter<ChatContent>
{
    public override ChatContent Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.String) return new ChatContent { Text = reader.GetString()! };
        if (reader.TokenType != JsonTokenType.StartArray)
            throw new InputShapeException($"'content' must be a string or an array of text parts, got {PromptInputConverter.Describe(reader.TokenType)}.");
        var text = new StringBuilder();
        int part = 0;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            using var doc = JsonDocument.ParseValue(ref reader);
            var e = doc.RootElement;
            if (e.ValueKind != JsonValueKind.Object
                || !e.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
                throw new InputShapeException($"content part {part} must be an object with a 'type'.");
            if (type.GetString() != "text")
                throw new InputShapeException($"content part {part} has type '{type.GetString()}'; only 'text' parts are supported.");
            if (!e.TryGetProperty("text", out var t) || t.ValueKind != JsonValueKind.String)
                throw new InputShapeException($"content part {part} of type 'text' needs a string 'text'.");
            text.Append(t.GetString());
            part++;
        }
        return new ChatContent { Text = text.ToString() };
    }

    public override void Write(Utf8JsonWriter writer, ChatContent value, JsonSerializerOptions options) => writer.WriteStringValue(value.Text);
}
