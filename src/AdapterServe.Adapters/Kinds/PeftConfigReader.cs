using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Store;

namespace AdapterServe.Adapters.Kinds;

/// <summary>
/// Strict reading of an <c>adapter_config.json</c> and of the fields that PEFT's tuners share (target_modules,
/// exclude_modules, layers_to_transform, patterns): a field of the wrong type is a 400 naming it. Every kind's config
/// reads through here.
/// </summary>
internal static class PeftConfigReader
{
    public const string FileName = "adapter_config.json";

    /// <summary>The JSON object of a config file (at most 16 MiB; comments and trailing commas allowed), or a 400 saying what is wrong.</summary>
    public static JsonObject LoadObject(string path, string fileName = FileName)
    {
        if (!File.Exists(path)) throw Invalid($"{fileName} is missing", "missing_adapter_config");
        JsonNode? root;
        try
        {
            using var stream = File.OpenRead(path);
            if (stream.Length > 16 << 20) throw Invalid($"{fileName} is {stream.Length} bytes long (at most 16 MiB)");
            root = JsonNode.Parse(stream, documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException e) { throw Invalid($"{fileName} is not valid JSON: {e.Message}"); }
        return root as JsonObject ?? throw Invalid($"{fileName} must hold a JSON object");
    }

    public static ModuleSelector? Selector(JsonObject o, string field) => o[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s == "all-linear" ? new ModuleSelector.AllLinear() : new ModuleSelector.FullMatch(CheckedRegex(s, field)),
        JsonArray a => new ModuleSelector.NameList(a.Select(x => x is JsonValue jv && jv.TryGetValue<string>(out var name) ? name
            : throw Invalid($"{FileName}: {field} must hold strings (got {x?.ToJsonString() ?? "null"})")).ToList()),
        var other => throw Invalid($"{FileName}: {field} must be a list of names, a regular expression or \"all-linear\" (got {other.ToJsonString()})"),
    };

    public static IReadOnlyList<int>? Layers(JsonObject o, ModuleSelector? target)
    {
        IReadOnlyList<int>? layers = o["layers_to_transform"] switch
        {
            null => null,
            JsonValue v when v.TryGetValue<int>(out int one) => [one],
            JsonArray a => a.Select(x => x is JsonValue jv && jv.TryGetValue<int>(out int i) ? i
                : throw Invalid($"{FileName}: layers_to_transform must hold integers (got {x?.ToJsonString() ?? "null"})")).ToList(),
            var other => throw Invalid($"{FileName}: layers_to_transform must be an integer or a list of integers (got {other.ToJsonString()})"),
        };
        if (layers is not null && target is ModuleSelector.FullMatch)
            throw Invalid($"{FileName}: layers_to_transform cannot be used when target_modules is a regular expression (PEFT refuses this too)");
        return layers;
    }

    /// <summary>A dict of PEFT pattern → value, in file order (first match wins).</summary>
    public static IReadOnlyList<KeyValuePair<string, T>> Patterns<T>(JsonObject o, string field, Func<string, JsonNode?, T> value) => o[field] switch
    {
        null => [],
        JsonObject patterns => patterns.Select(p => KeyValuePair.Create(CheckedRegex(p.Key, $"{field} key"), value(p.Key, p.Value))).ToList(),
        var other => throw Invalid($"{FileName}: {field} must be an object of pattern → value (got {other.ToJsonString()})"),
    };

    public static string CheckedRegex(string pattern, string field)
    {
        if (!PeftPatterns.IsValidRegex(pattern, out var error))
            throw Invalid($"{FileName}: {field} '{pattern}' is not a valid regular expression: {error}");
        return pattern;
    }

    /// <summary>Non-null and not false, empty or zero-length.</summary>
    public static bool IsSet(JsonNode? node) => node switch
    {
        null => false,
        JsonObject obj => obj.Count > 0,
        JsonArray arr => arr.Count > 0,
        JsonValue v when v.TryGetValue<bool>(out bool b) => b,
        JsonValue v when v.TryGetValue<string>(out var s) => s.Length > 0,
        _ => true,
    };

    /// <summary>
    /// Refuses what no Kronecker kind can honour: full copies of base modules, and any variant switch (<c>use_*</c> set
    /// to true, a non-empty <c>*_config</c>) not in <paramref name="knownFields"/>.
    /// </summary>
    public static void RefuseUnknownVariants(JsonObject o, IReadOnlySet<string> knownFields)
    {
        if (IsSet(o["modules_to_save"]))
            throw Unsupported($"{FileName}: modules_to_save ({o["modules_to_save"]!.ToJsonString()}) holds full copies of base modules; such adapters are not supported");
        foreach (var (key, value) in o)
        {
            if (knownFields.Contains(key)) continue;
            if (key.EndsWith("_config", StringComparison.Ordinal) && IsSet(value))
                throw Unsupported($"{FileName}: '{key}' is a variant this server does not know; refusing rather than serving it wrongly");
            if (key.StartsWith("use_", StringComparison.Ordinal) && value is JsonValue v && v.TryGetValue<bool>(out bool on) && on)
                throw Unsupported($"{FileName}: '{key}: true' is a variant this server does not know; refusing rather than serving it wrongly");
        }
    }

    public static string? OptionalString(JsonObject o, string field) => o[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        var other => throw Invalid($"{FileName}: field '{field}' must be a string (got {other.ToJsonString()})"),
    };

    public static bool? OptionalBool(JsonObject o, string field) => o[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<bool>(out bool b) => b,
        var other => throw Invalid($"{FileName}: field '{field}' must be true or false (got {other.ToJsonString()})"),
    };

    public static int? OptionalInt(JsonObject o, string field) => o[field] is { } node ? Int(node, $"field '{field}'") : null;

    public static int Int(JsonNode? node, string what) => node switch
    {
        JsonValue v when v.TryGetValue<int>(out int i) => i,
        JsonValue v when v.TryGetValue<double>(out double d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue => (int)d,
        _ => throw Invalid($"{FileName}: {what} must be an integer (got {node?.ToJsonString() ?? "null"})"),
    };

    public static double? OptionalNumber(JsonObject o, string field) => o[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out double d) && double.IsFinite(d) => d,
        var other => throw Invalid($"{FileName}: field '{field}' must be a finite number (got {other.ToJsonString()})"),
    };

    public static AdapterValidationException Invalid(string message, string code = "invalid_adapter_config") => new(message, code);
    public static AdapterValidationException Unsupported(string message) => new(message, "unsupported_adapter_feature");
}
