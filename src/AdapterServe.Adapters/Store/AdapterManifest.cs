using System.Text.Json;
using System.Text.Json.Serialization;
using AdapterServe.Modeling;

namespace AdapterServe.Adapters.Store;

/// <summary>The shape of the base model an adapter version was validated against.</summary>
public sealed record BaseModelShape(string Architecture, int HiddenSize, int NumHiddenLayers, int NumAttentionHeads, int NumKeyValueHeads, int HeadDim, int IntermediateSize)
{
    public static BaseModelShape Of(ModelConfig c) =>
        new(c.Architecture, c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize);
}

/// <summary>
/// <c>manifest.json</c> of one stored version, written last (after the PEFT files) and fsynced before the
/// version folder is renamed into place: a version folder without it was never committed. The description is
/// recomputed from the files at start (header only); the fields here are for people and for recovery.
/// </summary>
public sealed record AdapterManifest(
    int Format,
    string Name,
    int Version,
    string Kind,
    string ContentHash,
    string Source,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt,
    long WeightBytes,
    int MaxRank,
    IReadOnlyList<string> TargetModules,
    IReadOnlyList<StoredFile> Files,
    BaseModelShape BaseModel)
{
    public const string FileName = "manifest.json";
    public const int CurrentFormat = 1;

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    public static AdapterManifest For(AdapterRecord record, IReadOnlyList<StoredFile> files, ModelConfig baseModel) => new(
        CurrentFormat, record.Name, record.Version, record.Description.Kind.ToString().ToLowerInvariant(), record.ContentHash, record.Source,
        record.CreatedAt, record.UpdatedAt, record.Description.WeightBytes, record.Description.MaxRank, record.Description.TargetModules,
        files, BaseModelShape.Of(baseModel));

    /// <summary>Writes the manifest into <paramref name="directory"/> and flushes it to the disk.</summary>
    public void Write(string directory)
    {
        using var stream = new FileStream(Path.Combine(directory, FileName), FileMode.CreateNew, FileAccess.Write);
        JsonSerializer.Serialize(stream, this, Json);
        stream.Flush(flushToDisk: true);
    }

    public static AdapterManifest Read(string directory)
    {
        string path = Path.Combine(directory, FileName);
        try
        {
            using var stream = File.OpenRead(path);
            var manifest = JsonSerializer.Deserialize<AdapterManifest>(stream, Json) ?? throw new InvalidDataException($"{path} is empty");
            if (manifest.Format != CurrentFormat) throw new InvalidDataException($"{path}: manifest format {manifest.Format} is not supported (expected {CurrentFormat})");
            return manifest;
        }
        catch (JsonException e) { throw new InvalidDataException($"{path} is not a valid manifest: {e.Message}", e); }
    }
}
