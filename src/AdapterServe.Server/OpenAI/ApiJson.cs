using System.Collections;
using System.Reflection;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace AdapterServe.Server.OpenAI;

/// <summary>A request field with a value of the right type but the wrong shape; the message names the field.</summary>
internal sealed class InputShapeException(string message) : JsonException(message);

/// <summary>JSON of the OpenAI wire format: explicit snake_case names, strict types, case-sensitive.</summary>
public static class ApiJson
{
    public static readonly JsonSerializerOptions Options = Configure(new JsonSerializerOptions());

    /// <summary>Applies the wire settings to <paramref name="o"/> (also used for the minimal-API response writer).</summary>
    public static JsonSerializerOptions Configure(JsonSerializerOptions o)
    {
        o.PropertyNamingPolicy = null;
        o.PropertyNameCaseInsensitive = false;
        o.NumberHandling = JsonNumberHandling.Strict;
        o.DefaultIgnoreCondition = JsonIgnoreCondition.Never;
        o.Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping;   // JSON bodies, never embedded in HTML
        o.AllowTrailingCommas = false;
        o.ReadCommentHandling = JsonCommentHandling.Disallow;
        return o;
    }

    public static string Serialize<T>(T value) => JsonSerializer.Serialize(value, Options);

    /// <summary>
    /// Reads the request body as <typeparamref name="T"/>, whatever its Content-Type. Two steps, so that the error says
    /// which went wrong: not JSON at all (400 <c>invalid_json</c>), or a field of the wrong type or shape (400 naming it).
    /// </summary>
    public static async Task<T> ReadRequestAsync<T>(HttpRequest request, CancellationToken cancellationToken) where T : class
    {
        JsonDocument document;
        var body = await ReadBodyAsync(request, cancellationToken);
        try
        {
            document = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw ApiException.InvalidJson($"We could not parse the JSON body of your request: {e.Message}");
        }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw ApiException.InvalidJson($"The request body must be a JSON object, got {document.RootElement.ValueKind.ToString().ToLowerInvariant()}.");
            try
            {
                return document.RootElement.Deserialize<T>(Options)!;
            }
            catch (JsonException e)
            {
                throw Translate(e, typeof(T));
            }
        }
    }

    /// <summary>
    /// The whole body in one array of its own, not rented: <see cref="JsonDocument.ParseAsync"/> would grow its buffer in
    /// pooled arrays, and the shared pool keeps the largest of them (tens of MB after a huge body) for the life of the process.
    /// </summary>
    private static async Task<ReadOnlyMemory<byte>> ReadBodyAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        if (request.ContentLength is long length && length <= Array.MaxLength)
        {
            var buffer = new byte[length];
            int read = 0, n;
            while (read < buffer.Length && (n = await request.Body.ReadAsync(buffer.AsMemory(read), cancellationToken)) > 0) read += n;
            return buffer.AsMemory(0, read);
        }
        using var copy = new MemoryStream();
        await request.Body.CopyToAsync(copy, cancellationToken);
        return copy.GetBuffer().AsMemory(0, (int)copy.Length);
    }

    /// <summary>A field of the wrong type or shape: 400 with <c>param</c> = its path (<c>messages[0].content</c>).</summary>
    internal static ApiException Translate(JsonException e, Type root)
    {
        string param = e.Path is null or "$" ? "body" : e.Path.StartsWith("$.", StringComparison.Ordinal) ? e.Path[2..] : e.Path.TrimStart('$');
        if (e is InputShapeException)
            return ApiException.InvalidValue(param, e.Message.Contains($"'{param}'", StringComparison.Ordinal) ? e.Message : $"Invalid '{param}': {e.Message}");
        var expected = ExpectedType(root, param);
        return ApiException.InvalidValue(param, expected is null
            ? $"Invalid value for '{param}'."
            : $"Invalid type for '{param}': expected {Describe(expected)}.");
    }

    /// <summary>The CLR type of the field at <paramref name="param"/> (e.g. <c>messages[0].role</c>), by JSON names.</summary>
    private static Type? ExpectedType(Type root, string param)
    {
        Type? current = root;
        foreach (string rawSegment in param.Split('.'))
        {
            if (current is null) return null;
            string segment = rawSegment;
            int bracket = segment.IndexOf('[');
            int indexCount = bracket < 0 ? 0 : segment[bracket..].Count(c => c == '[');
            if (bracket >= 0) segment = segment[..bracket];
            if (segment.Length > 0)
                current = DictionaryValueType(current) ?? current.GetProperties(BindingFlags.Public | BindingFlags.Instance)
                    .FirstOrDefault(p => p.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name == segment)?.PropertyType;
            for (int i = 0; i < indexCount && current is not null; i++) current = ElementType(current);
        }
        return current is null ? null : Nullable.GetUnderlyingType(current) ?? current;
    }

    private static Type? DictionaryValueType(Type t) =>
        t.IsGenericType && t.GetGenericTypeDefinition() == typeof(Dictionary<,>) ? t.GetGenericArguments()[1] : null;

    private static Type? ElementType(Type t) =>
        t.IsArray ? t.GetElementType() : t.IsGenericType && typeof(IEnumerable).IsAssignableFrom(t) ? t.GetGenericArguments()[^1] : null;

    private static string Describe(Type t) => t switch
    {
        _ when t == typeof(int) || t == typeof(long) => "an integer",
        _ when t == typeof(double) || t == typeof(float) => "a number",
        _ when t == typeof(bool) => "a boolean",
        _ when t == typeof(string) => "a string",
        _ when t == typeof(StopInput) => "a string or an array of strings",
        _ when t == typeof(PromptInput) => "a string, an array of strings, an array of token ids, or an array of token-id arrays",
        _ when t == typeof(ChatContent) => "a string or an array of text parts",
        _ when DictionaryValueType(t) is not null => "an object",
        _ when t != typeof(string) && typeof(IEnumerable).IsAssignableFrom(t) => "an array",
        _ => "an object",
    };
}
