using AdapterServe.Modeling;

namespace AdapterServe.Tests.Infrastructure;

/// <summary>Tiny model configurations written to disk through <see cref="SyntheticModel"/> and loaded through the real loader.</summary>
public static class TinyModels
{
    /// <summary>Llama layout: GQA 4→2 heads, tied embeddings.</summary>
    public static readonly ModelConfig Llama = new()
    {
        HiddenSize = 32, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8,
        IntermediateSize = 48, VocabSize = 300, MaxPositionEmbeddings = 128, RmsNormEps = 1e-5, TieWordEmbeddings = true,
    };

    /// <summary>Qwen2 layout: q/k/v biases, untied LM head, llama3 rope scaling, 1 key/value head.</summary>
    public static readonly ModelConfig Qwen2Like = new()
    {
        Architecture = "Qwen2ForCausalLM", HiddenSize = 24, NumHiddenLayers = 2, NumAttentionHeads = 3, NumKeyValueHeads = 1, HeadDim = 8,
        IntermediateSize = 40, VocabSize = 300, MaxPositionEmbeddings = 128, RmsNormEps = 1e-6, AttentionBias = true, TieWordEmbeddings = false,
        RopeTheta = 500000, RopeScaling = new RopeScaling("llama3", 8, 1, 4, 16),
    };

    private static readonly Dictionary<string, string> Written = new();
    private static readonly Lock Gate = new();

    /// <summary>Writes (once per test run) and returns the directory of a tiny model.</summary>
    public static string Directory(ModelConfig config, int seed = 1)
    {
        string key = $"{config.GetHashCode()}-{seed}";
        lock (Gate)
        {
            if (Written.TryGetValue(key, out var dir)) return dir;
            dir = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "adapterserve-tests", "models", Guid.NewGuid().ToString("N"));
            SyntheticModel.Write(dir, config, seed);
            Written[key] = dir;
            return dir;
        }
    }
}
