using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterStore;

/// <summary>One tensor of a test adapter: float values stored with <see cref="DType"/>.</summary>
public sealed record TestTensor(string Name, long[] Shape, float[] Values, ScalarType DType = ScalarType.Float32);

/// <summary>A PEFT adapter built in a test: an adapter_config.json object and tensors, written with the real safetensors writer.</summary>
public sealed class TestAdapter
{
    public JsonObject Config { get; set; } = new();
    public List<TestTensor> Tensors { get; } = [];

    /// <summary>The tiny base every store test uses: q/o [8→8], k/v [8→4], gate/up [8→12], down [12→8]; 2 layers.</summary>
    public static readonly ModelConfig TinyBase = new()
    {
        HiddenSize = 8, NumHiddenLayers = 2, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 4,
        IntermediateSize = 12, VocabSize = 16,
    };

    public static string Prefix(int layer, Projection p) => "base_model.model." + ProjectionNames.ModulePath(layer, p);

    /// <summary>A LoRA on every layer of the given projections, rank r (per-module ranks via <paramref name="rankOf"/>).</summary>
    public static TestAdapter Lora(int r = 2, double alpha = 4, Projection[]? projections = null, int seed = 1,
        Func<int, Projection, int>? rankOf = null, ModelConfig? baseModel = null)
    {
        baseModel ??= TinyBase;
        projections ??= [Projection.Q, Projection.V];
        var adapter = new TestAdapter
        {
            Config = new JsonObject
            {
                ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["r"] = r, ["lora_alpha"] = alpha,
                ["target_modules"] = new JsonArray(projections.Select(p => (JsonNode)p.ShortName()).ToArray()),
                ["lora_dropout"] = 0.0, ["bias"] = "none", ["fan_in_fan_out"] = false, ["use_rslora"] = false,
                ["use_dora"] = false, ["modules_to_save"] = null, ["inference_mode"] = true,
            },
        };
        var random = new Random(seed);
        for (int layer = 0; layer < baseModel.NumHiddenLayers; layer++)
            foreach (var p in projections)
            {
                int rank = rankOf?.Invoke(layer, p) ?? r;
                var (dIn, dOut) = baseModel.ProjectionShape(p);
                adapter.Add($"{Prefix(layer, p)}.lora_A.weight", [rank, dIn], random);
                adapter.Add($"{Prefix(layer, p)}.lora_B.weight", [dOut, rank], random);
            }
        return adapter;
    }

    public TestAdapter Add(string name, long[] shape, Random random, ScalarType dtype = ScalarType.Float32)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        Tensors.Add(new TestTensor(name, shape, Enumerable.Range(0, (int)n).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray(), dtype));
        return this;
    }

    public TestAdapter Replace(string name, Func<TestTensor, TestTensor> change)
    {
        int i = Tensors.FindIndex(t => t.Name == name);
        if (i < 0) throw new ArgumentException($"no tensor {name}");
        Tensors[i] = change(Tensors[i]);
        return this;
    }

    public TestAdapter Remove(string name)
    {
        if (Tensors.RemoveAll(t => t.Name == name) == 0) throw new ArgumentException($"no tensor {name}");
        return this;
    }

    public byte[] ConfigBytes() => Encoding.UTF8.GetBytes(Config.ToJsonString());

    public byte[] SafetensorsBytes()
    {
        string path = Path.Combine(Path.GetTempPath(), $"adapterserve-test-{Guid.NewGuid():N}.safetensors");
        try
        {
            using (var scope = NewDisposeScope())
            {
                var tensors = Tensors.Select(t => KeyValuePair.Create(t.Name, tensor(t.Values, t.Shape).to_type(t.DType))).ToList();
                SafetensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
            }
            return File.ReadAllBytes(path);
        }
        finally { File.Delete(path); }
    }

    /// <summary>Writes adapter_config.json and adapter_model.safetensors into <paramref name="directory"/>.</summary>
    public string WriteTo(string directory)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllBytes(Path.Combine(directory, "adapter_config.json"), ConfigBytes());
        File.WriteAllBytes(Path.Combine(directory, "adapter_model.safetensors"), SafetensorsBytes());
        return directory;
    }

    public (string Name, byte[] Bytes)[] Files() => [("adapter_config.json", ConfigBytes()), ("adapter_model.safetensors", SafetensorsBytes())];
}

/// <summary>Archives built byte by byte in the tests (zip and tar.gz), including hostile ones.</summary>
public static class TestArchives
{
    public static byte[] Zip(IEnumerable<(string Name, byte[] Bytes)> entries, Action<ZipArchiveEntry>? touch = null)
    {
        using var memory = new MemoryStream();
        using (var zip = new ZipArchive(memory, ZipArchiveMode.Create, leaveOpen: true))
            foreach (var (name, bytes) in entries)
            {
                var entry = zip.CreateEntry(name);
                touch?.Invoke(entry);
                using var stream = entry.Open();
                stream.Write(bytes);
            }
        return memory.ToArray();
    }

    public static byte[] TarGz(IEnumerable<TarEntry> entries)
    {
        using var memory = new MemoryStream();
        using (var gzip = new GZipStream(memory, CompressionLevel.Fastest, leaveOpen: true))
        using (var tar = new TarWriter(gzip, TarEntryFormat.Pax, leaveOpen: true))
            foreach (var entry in entries) tar.WriteEntry(entry);
        return memory.ToArray();
    }

    public static TarEntry File(string name, byte[] bytes) =>
        new PaxTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(bytes) };

    public static TarEntry Link(string name, string target, TarEntryType type = TarEntryType.SymbolicLink) =>
        new PaxTarEntry(type, name) { LinkName = target };
}

/// <summary>A listing of a folder with the SHA-256 of every file: equal listings mean byte-for-byte equal trees.</summary>
public static class TreeListing
{
    public static string Of(string root)
    {
        if (!Directory.Exists(root)) return "<missing>";
        var lines = Directory.EnumerateFileSystemEntries(root, "*", SearchOption.AllDirectories)
            .Select(p => Path.GetRelativePath(root, p).Replace('\\', '/'))
            .Order(StringComparer.Ordinal)
            .Select(rel =>
            {
                string full = Path.Combine(root, rel);
                return Directory.Exists(full) ? rel + "/" : $"{rel} {Convert.ToHexStringLower(SHA256.HashData(System.IO.File.ReadAllBytes(full)))}";
            });
        return string.Join("\n", lines);
    }
}

/// <summary>A residency cache double: the tests set active sequence counts and pins by hand.</summary>
public sealed class FakeResidency : IAdapterResidency
{
    private readonly Dictionary<string, int> _active = [];
    private readonly Dictionary<string, bool> _pinned = [];
    private readonly Dictionary<string, TaskCompletionSource> _idle = [];
    public List<string> Forgotten { get; } = [];

    public void SetActive(string name, int count)
    {
        lock (_active)
        {
            _active[name] = count;
            if (count == 0 && _idle.Remove(name, out var tcs)) tcs.TrySetResult();
        }
    }

    public AdapterRuntimeStatus Status(string name)
    {
        lock (_active)
            return new AdapterRuntimeStatus(ResidencyTier.Stored, _pinned.GetValueOrDefault(name), 0, null, _active.GetValueOrDefault(name), 0);
    }

    public void SetPinned(string name, bool pinned) { lock (_active) _pinned[name] = pinned; }

    public int ActiveSequences(string name) { lock (_active) return _active.GetValueOrDefault(name); }

    public Task WaitUntilUnusedAsync(string name, CancellationToken cancellationToken)
    {
        lock (_active)
        {
            if (_active.GetValueOrDefault(name) == 0) return Task.CompletedTask;
            var tcs = _idle.TryGetValue(name, out var existing) ? existing : _idle[name] = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return tcs.Task.WaitAsync(cancellationToken);
        }
    }

    public void Forget(string name) { lock (_active) Forgotten.Add(name); }
}

/// <summary>A temporary folder for one test.</summary>
public sealed class TempFolder : IDisposable
{
    private readonly DirectoryInfo _root = Directory.CreateTempSubdirectory("adapterserve-store-");
    public string Path => _root.FullName;
    public string Sub(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose()
    {
        try { _root.Delete(recursive: true); } catch (IOException) { }
    }
}

