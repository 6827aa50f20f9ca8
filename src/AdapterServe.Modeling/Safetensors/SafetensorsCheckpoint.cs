using System.Text.Json;
using static TorchSharp.torch;

namespace AdapterServe.Modeling.Safetensors;

/// <summary>
/// The weights of a model directory: <c>model.safetensors</c>, or else the shards listed by
/// <c>model.safetensors.index.json</c> (its <c>weight_map</c>: tensor → shard file). Every shard is opened and
/// validated up front; tensors present in a shard but absent from the weight map are not exposed.
/// Thread-safety as <see cref="SafetensorsFile"/>.
/// </summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    readonly IReadOnlyList<SafetensorsFile> _files;
    readonly Dictionary<string, SafetensorsFile> _fileOf;

    SafetensorsCheckpoint(string directory, IReadOnlyList<SafetensorsFile> files, Dictionary<string, SafetensorsFile> fileOf)
    {
        Directory = directory;
        _files = files;
        _fileOf = fileOf;
    }

    public string Directory { get; }

    /// <summary>The opened files: one, or one per shard.</summary>
    public IReadOnlyList<SafetensorsFile> Files => _files;

    public IReadOnlyCollection<string> Names => _fileOf.Keys;

    public static SafetensorsCheckpoint Open(string modelDirectory)
    {
        if (!System.IO.Directory.Exists(modelDirectory))
            throw new DirectoryNotFoundException($"Model directory {modelDirectory} does not exist");
        var single = Path.Combine(modelDirectory, SingleFileName);
        if (File.Exists(single))
        {
            var file = SafetensorsFile.Open(single);
            return new SafetensorsCheckpoint(modelDirectory, [file], file.Tensors.Keys.ToDictionary(name => name, _ => file, StringComparer.Ordinal));
        }
        var index = Path.Combine(modelDirectory, IndexFileName);
        if (File.Exists(index))
            return OpenSharded(modelDirectory, index);
        throw new FileNotFoundException($"Model directory {modelDirectory} has neither {SingleFileName} nor {IndexFileName}");
    }

    static SafetensorsCheckpoint OpenSharded(string directory, string indexPath)
    {
        var weightMap = ReadWeightMap(directory, indexPath);
        var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            var fileOf = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (var (tensor, shard) in weightMap)
            {
                if (!shards.TryGetValue(shard, out var file))
                {
                    var shardPath = Path.Combine(directory, shard);
                    if (!File.Exists(shardPath))
                        throw new SafetensorsFormatException($"{indexPath}: shard '{shard}' of tensor '{tensor}' does not exist");
                    file = SafetensorsFile.Open(shardPath);
                    shards.Add(shard, file);
                }
                if (!file.Tensors.ContainsKey(tensor))
                    throw new SafetensorsFormatException($"{indexPath}: tensor '{tensor}' is not in its shard '{shard}'");
                fileOf.Add(tensor, file);
            }
            return new SafetensorsCheckpoint(directory, shards.Values.ToList(), fileOf);
        }
        catch
        {
            foreach (var file in shards.Values)
                file.Dispose();
            throw;
        }
    }

    /// <summary>The index's <c>weight_map</c>, each shard checked to be a file name inside <paramref name="directory"/>.</summary>
    static Dictionary<string, string> ReadWeightMap(string directory, string indexPath)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(indexPath));
        }
        catch (JsonException e)
        {
            throw new SafetensorsFormatException($"{indexPath}: not valid JSON ({e.Message})");
        }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object
                || !document.RootElement.TryGetProperty("weight_map", out var map)
                || map.ValueKind != JsonValueKind.Object)
                throw new SafetensorsFormatException($"{indexPath}: no 'weight_map' object");

            var root = Path.GetFullPath(directory);
            var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String)
                    throw new SafetensorsFormatException($"{indexPath}: shard of tensor '{entry.Name}' is a {entry.Value.ValueKind}, not a file name");
                var shard = entry.Value.GetString()!;
                var full = Path.GetFullPath(Path.Combine(root, shard));
                if (shard.Length == 0 || Path.IsPathRooted(shard) || !full.StartsWith(Path.TrimEndingDirectorySeparator(root) + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                    throw new SafetensorsFormatException($"{indexPath}: shard '{shard}' of tensor '{entry.Name}' lies outside the model directory");
                if (!weightMap.TryAdd(entry.Name, shard))
                    throw new SafetensorsFormatException($"{indexPath}: tensor '{entry.Name}' appears twice in weight_map");
            }
            return weightMap;
        }
    }

    public bool Contains(string name) => _fileOf.ContainsKey(name);

    public SafetensorsEntry Entry(string name) => FileOf(name).Tensors[name];

    /// <summary>Reads one tensor, as <see cref="SafetensorsFile.Read"/>.</summary>
    public Tensor Read(string name, ScalarType? dtype = null, Device? device = null) => FileOf(name).Read(name, dtype, device);

    SafetensorsFile FileOf(string name) =>
        _fileOf.TryGetValue(name, out var file) ? file : throw new KeyNotFoundException($"{Directory}: no tensor named '{name}'");

    public void Dispose()
    {
        foreach (var file in _files)
            file.Dispose();
    }
}
