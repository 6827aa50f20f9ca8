using System.Text.Json;
using System.Text.Unicode;

namespace AdapterServe.Modeling.Safetensors;

/// <summary>Parses and validates the JSON header of a safetensors file against the size of its data buffer (methods.md §1).</summary>
internal sealed class SafetensorsHeader
{
    public const long MaxHeaderBytes = 100_000_000;
    const string MetadataKey = "__metadata__";

    public required Dictionary<string, SafetensorsEntry> Tensors { get; init; }
    public required Dictionary<string, string> Metadata { get; init; }

    /// <summary>Validates the 8-byte length prefix <paramref name="headerLength"/> against the file size, before the header is read.</summary>
    public static void CheckLength(string path, long fileLength, ulong headerLength)
    {
        if (headerLength > MaxHeaderBytes)
            throw Fail(path, $"header length {headerLength} exceeds the limit of {MaxHeaderBytes} bytes");
        if (headerLength > (ulong)(fileLength - 8))
            throw Fail(path, $"header length {headerLength} runs past the end of the file ({fileLength} bytes)");
    }

    public static SafetensorsHeader Parse(string path, byte[] header, long dataLength)
    {
        if (header.Length == 0 || header[0] != (byte)'{')
            throw Fail(path, "header does not start with '{'");
        if (!Utf8.IsValid(header))
            throw Fail(path, "header is not valid UTF-8");

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header);
        }
        catch (JsonException e)
        {
            throw Fail(path, $"header is not valid JSON ({e.Message})");
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw Fail(path, "header is not a JSON object");

            var tensors = new Dictionary<string, SafetensorsEntry>(StringComparer.Ordinal);
            Dictionary<string, string>? metadata = null;
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (property.Name == MetadataKey)
                {
                    if (metadata is not null)
                        throw Fail(path, $"'{MetadataKey}' appears twice");
                    metadata = ParseMetadata(path, property.Value);
                    continue;
                }
                if (tensors.ContainsKey(property.Name))
                    throw Fail(path, property.Name, "appears twice in the header");
                tensors.Add(property.Name, ParseEntry(path, property.Name, property.Value, dataLength));
            }

            CheckLayout(path, tensors.Values, dataLength);
            return new SafetensorsHeader { Tensors = tensors, Metadata = metadata ?? [] };
        }
    }

    static Dictionary<string, string> ParseMetadata(string path, JsonElement value)
    {
        if (value.ValueKind == JsonValueKind.Null)
            return [];
        if (value.ValueKind != JsonValueKind.Object)
            throw Fail(path, $"'{MetadataKey}' is not a JSON object of strings");
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var item in value.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
                throw Fail(path, $"'{MetadataKey}' value of '{item.Name}' is a {item.Value.ValueKind}, not a string");
            if (!metadata.TryAdd(item.Name, item.Value.GetString()!))
                throw Fail(path, $"'{MetadataKey}' key '{item.Name}' appears twice");
        }
        return metadata;
    }

    static SafetensorsEntry ParseEntry(string path, string name, JsonElement value, long dataLength)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw Fail(path, name, $"entry is a {value.ValueKind}, not a JSON object");

        var dtypeName = Field(path, name, value, "dtype", JsonValueKind.String).GetString()!;
        var dtype = SafetensorsDTypes.Parse(dtypeName, out var problem) ?? throw Fail(path, name, problem!);

        var shape = Field(path, name, value, "shape", JsonValueKind.Array).EnumerateArray()
            .Select(dim => NonNegativeInteger(path, name, "shape dimension", dim))
            .ToArray();

        var offsets = Field(path, name, value, "data_offsets", JsonValueKind.Array);
        if (offsets.GetArrayLength() != 2)
            throw Fail(path, name, $"data_offsets has {offsets.GetArrayLength()} elements, not 2 [begin, end]");
        var begin = NonNegativeInteger(path, name, "data_offsets begin", offsets[0]);
        var end = NonNegativeInteger(path, name, "data_offsets end", offsets[1]);
        if (end < begin)
            throw Fail(path, name, $"data_offsets [{begin}, {end}] end before they begin");

        long byteCount;
        try
        {
            byteCount = checked(shape.Aggregate(1L, (a, b) => a * b) * dtype.ElementSize());
        }
        catch (OverflowException)
        {
            throw Fail(path, name, $"shape [{string.Join(", ", shape)}] is too large");
        }
        if (end - begin != byteCount)
            throw Fail(path, name, $"data_offsets [{begin}, {end}] span {end - begin} bytes, but shape [{string.Join(", ", shape)}] of {dtype} needs {byteCount}");
        if (end > dataLength)
            throw Fail(path, name, $"data_offsets [{begin}, {end}] run past the end of the data buffer ({dataLength} bytes)");

        return new SafetensorsEntry(name, dtype, shape, begin, end);
    }

    static JsonElement Field(string path, string name, JsonElement entry, string field, JsonValueKind kind)
    {
        if (!entry.TryGetProperty(field, out var value))
            throw Fail(path, name, $"missing '{field}'");
        if (value.ValueKind != kind)
            throw Fail(path, name, $"'{field}' is a {value.ValueKind}, not a {kind}");
        return value;
    }

    static long NonNegativeInteger(string path, string name, string what, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out var number))
            throw Fail(path, name, $"{what} {value.GetRawText()} is not a 64-bit integer");
        if (number < 0)
            throw Fail(path, name, $"{what} {number} is negative");
        return number;
    }

    /// <summary>Tensors must tile the data buffer exactly: from 0, no overlaps, no holes, ending at its last byte.</summary>
    static void CheckLayout(string path, IEnumerable<SafetensorsEntry> entries, long dataLength)
    {
        long expected = 0;
        SafetensorsEntry? previous = null;
        foreach (var entry in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (entry.Begin < expected)
                throw Fail(path, entry.Name, $"data_offsets [{entry.Begin}, {entry.End}] overlap tensor '{previous!.Name}' [{previous.Begin}, {previous.End}]");
            if (entry.Begin > expected)
                throw Fail(path, entry.Name, previous is null
                    ? $"data_offsets [{entry.Begin}, {entry.End}] leave a hole of {entry.Begin} bytes at the start of the data buffer"
                    : $"data_offsets [{entry.Begin}, {entry.End}] leave a hole of {entry.Begin - expected} bytes after tensor '{previous.Name}' [{previous.Begin}, {previous.End}]");
            expected = entry.End;
            previous = entry;
        }
        if (expected != dataLength)
            throw Fail(path, previous is null
                ? $"the header lists no tensor data, but the data buffer holds {dataLength} bytes"
                : $"the last tensor '{previous.Name}' ends at data offset {expected}, but the data buffer holds {dataLength} bytes (file size does not match the header)");
    }

    internal static SafetensorsFormatException Fail(string path, string problem) => new($"{path}: {problem}");

    internal static SafetensorsFormatException Fail(string path, string tensor, string problem) => new($"{path}: tensor '{tensor}': {problem}");
}
