using AdapterServe.Modeling;

namespace AdapterServe.Bench.Models;

/// <summary>The model sizes the benchmark can build with random weights (issue 5), by name or from a <c>config.json</c>.</summary>
public static class ModelSizes
{
    /// <summary>Minimal Llama for smoke tests: GQA 4→2 heads, tied embeddings.</summary>
    public static readonly ModelConfig Tiny = new()
    {
        HiddenSize = 32, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8,
        IntermediateSize = 64, VocabSize = 320, MaxPositionEmbeddings = 1024, RmsNormEps = 1e-5, TieWordEmbeddings = true,
    };

    /// <summary>The shape of TinyStories stories260K (dim 64, hidden 172, 5 layers, 8 heads, 4 key/value heads, vocabulary 512).</summary>
    public static readonly ModelConfig Stories260K = new()
    {
        HiddenSize = 64, NumHiddenLayers = 5, NumAttentionHeads = 8, NumKeyValueHeads = 4, HeadDim = 8,
        IntermediateSize = 172, VocabSize = 512, MaxPositionEmbeddings = 512, RmsNormEps = 1e-5, TieWordEmbeddings = true,
    };

    /// <summary>The shape of SmolLM2-135M.</summary>
    public static readonly ModelConfig Smol135M = new()
    {
        HiddenSize = 576, NumHiddenLayers = 30, NumAttentionHeads = 9, NumKeyValueHeads = 3, HeadDim = 64,
        IntermediateSize = 1536, VocabSize = 49152, MaxPositionEmbeddings = 2048, RmsNormEps = 1e-5, RopeTheta = 100000,
        TieWordEmbeddings = true,
    };

    /// <summary>The shape of Llama-3.2-1B (tied embeddings, llama3 rope scaling).</summary>
    public static readonly ModelConfig Llama1B = new()
    {
        HiddenSize = 2048, NumHiddenLayers = 16, NumAttentionHeads = 32, NumKeyValueHeads = 8, HeadDim = 64,
        IntermediateSize = 8192, VocabSize = 128256, MaxPositionEmbeddings = 131072, RmsNormEps = 1e-5, RopeTheta = 500000,
        RopeScaling = new RopeScaling("llama3", 32, 1, 4, 8192), TieWordEmbeddings = true,
    };

    public static readonly IReadOnlyDictionary<string, ModelConfig> Named = new Dictionary<string, ModelConfig>(StringComparer.OrdinalIgnoreCase)
    {
        ["tiny"] = Tiny,
        ["stories260K"] = Stories260K,
        ["135m"] = Smol135M,
        ["1b"] = Llama1B,
    };

    /// <summary>A named size, or the <c>config.json</c> at a path (named <c>custom-&lt;hash&gt;</c> in the cache).</summary>
    public static (string Name, ModelConfig Config) Resolve(string nameOrPath)
    {
        if (Named.TryGetValue(nameOrPath, out var named)) return (Named.Keys.First(k => string.Equals(k, nameOrPath, StringComparison.OrdinalIgnoreCase)), named);
        string path = Directory.Exists(nameOrPath) ? Path.Combine(nameOrPath, "config.json") : nameOrPath;
        if (!File.Exists(path))
            throw new UsageException($"--model-config '{nameOrPath}' is neither a known size ({string.Join(", ", Named.Keys)}) nor an existing config.json");
        ModelConfig config;
        try { config = ModelConfig.Load(path); }
        catch (InvalidDataException e) { throw new UsageException($"--model-config {path}: {e.Message}"); }
        return ("custom-" + SyntheticModelCache.Fingerprint(config, 0)[..10], config);
    }

    /// <summary>Weights the model holds (embeddings once when tied).</summary>
    public static long ParameterCount(ModelConfig c)
    {
        int headDim = c.HeadDim > 0 ? c.HeadDim : c.HiddenSize / c.NumAttentionHeads;
        var full = c with { HeadDim = headDim };
        long perLayer = 2L * c.HiddenSize + ProjectionNames.All.Sum(p => { var (i, o) = full.ProjectionShape(p); return (long)i * o; });
        if (c.AttentionBias) perLayer += (c.NumAttentionHeads + 2L * c.NumKeyValueHeads) * headDim;
        long embeddings = (long)c.VocabSize * c.HiddenSize;
        return embeddings * (c.TieWordEmbeddings ? 1 : 2) + c.NumHiddenLayers * perLayer + c.HiddenSize;
    }
}
