using System.Text.Json;
using AdapterServe.Modeling.Safetensors;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Safetensors;

public sealed class SafetensorsCheckpointTests : IDisposable
{
    readonly SafetensorsTestFiles _files = new();

    public void Dispose() => _files.Dispose();

    static Dictionary<string, Tensor> Weights() => new()
    {
        ["embed"] = arange(40, dtype: ScalarType.Float32).reshape(10, 4),     // 160 bytes
        ["layer.0.w"] = arange(12, dtype: ScalarType.Int64).reshape(3, 4),    // 96 bytes
        ["layer.0.b"] = arange(3, dtype: ScalarType.BFloat16),                // 6 bytes
        ["layer.1.w"] = full(20, 7.0, dtype: ScalarType.Float64),             // 160 bytes
        ["norm"] = tensor(new short[] { 1, 2 }),                              // 4 bytes
    };

    string ModelDirectory(string name) => _files.PathOf(name);

    [Fact]
    public void Sharded_round_trip_splits_by_size_and_reads_every_tensor_back()
    {
        using var scope = NewDisposeScope();
        var weights = Weights();
        var directory = ModelDirectory("sharded");
        SafetensorsWriter.WriteSharded(directory, weights, maxShardBytes: 200);

        // Greedy in order, at most 200 bytes each: [embed], [layer.0.w, layer.0.b], [layer.1.w, norm].
        var shardNames = Directory.GetFiles(directory, "*.safetensors").Select(p => Path.GetFileName(p)).Order().ToArray();
        Assert.Equal(new[] { "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors" }, shardNames);
        using var index = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(directory, "model.safetensors.index.json")));
        Assert.Equal(426, index.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
        Assert.Equal("model-00002-of-00003.safetensors", index.RootElement.GetProperty("weight_map").GetProperty("layer.0.b").GetString());

        using var checkpoint = SafetensorsCheckpoint.Open(directory);
        Assert.Equal(3, checkpoint.Files.Count);
        Assert.Equal(weights.Keys.Order(), checkpoint.Names.Order());
        foreach (var (name, original) in weights)
        {
            Assert.True(checkpoint.Contains(name));
            Assert.Equal(original.shape, checkpoint.Entry(name).Shape);
            var read = checkpoint.Read(name);
            Assert.Equal(original.dtype, read.dtype);
            Assert.True(read.bytes.SequenceEqual(original.bytes), $"bytes of '{name}' differ");
        }
        Assert.Equal(new float[] { 0, 1, 2 }, checkpoint.Read("layer.0.b", ScalarType.Float32).data<float>().ToArray());
        Assert.False(checkpoint.Contains("lm_head.weight"));
        Assert.Contains("'lm_head.weight'", Assert.Throws<KeyNotFoundException>(() => checkpoint.Read("lm_head.weight")).Message);
    }

    [Fact]
    public void Single_file_directory_opens_model_safetensors()
    {
        using var scope = NewDisposeScope();
        var directory = ModelDirectory("single");
        Directory.CreateDirectory(directory);
        SafetensorsWriter.Write(Path.Combine(directory, "model.safetensors"), Weights());

        using var checkpoint = SafetensorsCheckpoint.Open(directory);
        Assert.Single(checkpoint.Files);
        Assert.Equal(5, checkpoint.Names.Count);
        Assert.Equal(new long[] { 4, 5, 6, 7 }, checkpoint.Read("layer.0.w")[1].data<long>().ToArray());
    }

    void WriteIndex(string directory, object weightMap) =>
        File.WriteAllText(Path.Combine(directory, "model.safetensors.index.json"), JsonSerializer.Serialize(new { weight_map = weightMap }));

    string ShardedDirectory(string name)
    {
        using var scope = NewDisposeScope();
        var directory = ModelDirectory(name);
        SafetensorsWriter.WriteSharded(directory, Weights(), maxShardBytes: 200);
        return directory;
    }

    [Fact]
    public void Index_naming_a_missing_shard_is_rejected()
    {
        var directory = ShardedDirectory("missing");
        File.Delete(Path.Combine(directory, "model-00003-of-00003.safetensors"));

        var error = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCheckpoint.Open(directory));
        Assert.Contains("shard 'model-00003-of-00003.safetensors'", error.Message);
        Assert.Contains("does not exist", error.Message);
    }

    [Fact]
    public void Index_naming_a_tensor_absent_from_its_shard_is_rejected()
    {
        var directory = ShardedDirectory("absent");
        WriteIndex(directory, new Dictionary<string, string> { ["embed"] = "model-00001-of-00003.safetensors", ["norm"] = "model-00001-of-00003.safetensors" });

        var error = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCheckpoint.Open(directory));
        Assert.Contains("tensor 'norm' is not in its shard 'model-00001-of-00003.safetensors'", error.Message);
    }

    [Theory]
    [InlineData("../outside.safetensors")]
    [InlineData("sub/../../outside.safetensors")]
    [InlineData("/etc/passwd")]
    [InlineData("")]
    public void Index_with_a_shard_outside_the_directory_is_rejected(string shard)
    {
        var directory = ShardedDirectory("escape");
        File.Copy(Path.Combine(directory, "model-00001-of-00003.safetensors"), _files.PathOf("outside.safetensors"));
        WriteIndex(directory, new Dictionary<string, string> { ["embed"] = shard });

        var error = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCheckpoint.Open(directory));
        Assert.Contains($"shard '{shard}' of tensor 'embed' lies outside the model directory", error.Message);
    }

    [Theory]
    [InlineData("{\"metadata\": {}}", "no 'weight_map' object")]
    [InlineData("{\"weight_map\": [\"a\"]}", "no 'weight_map' object")]
    [InlineData("{\"weight_map\": {\"embed\": 3}}", "shard of tensor 'embed' is a Number")]
    [InlineData("{\"weight_map\": ", "not valid JSON")]
    public void Malformed_index_is_rejected(string index, string problem)
    {
        var directory = ShardedDirectory("malformed");
        File.WriteAllText(Path.Combine(directory, "model.safetensors.index.json"), index);

        var error = Assert.Throws<SafetensorsFormatException>(() => SafetensorsCheckpoint.Open(directory));
        Assert.Contains("model.safetensors.index.json", error.Message);
        Assert.Contains(problem, error.Message);
    }

    [Fact]
    public void Directory_without_weights_is_reported()
    {
        var directory = ModelDirectory("none");
        Directory.CreateDirectory(directory);

        var error = Assert.Throws<FileNotFoundException>(() => SafetensorsCheckpoint.Open(directory));
        Assert.Contains(directory, error.Message);
        Assert.Contains("model.safetensors.index.json", error.Message);
    }
}
