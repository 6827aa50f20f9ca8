using AdapterServe.Modeling;

namespace AdapterServe.Engine;

/// <summary>The embedded default: a small Llama with random weights from a fixed seed, written once to a cache folder.</summary>
public static class DemoModel
{
    public const int Seed = 20261123;

    public static ModelConfig Config { get; } = new()
    {
        HiddenSize = 128,
        NumHiddenLayers = 4,
        NumAttentionHeads = 4,
        NumKeyValueHeads = 2,
        HeadDim = 32,
        IntermediateSize = 344,
        VocabSize = 512,
        MaxPositionEmbeddings = 2048,
        RmsNormEps = 1e-5,
        TieWordEmbeddings = false,   // random tied embeddings make greedy decoding repeat the prompt token
    };

    /// <summary>Writes the demo model (once per version) under the temp folder and returns its directory.</summary>
    public static string EnsureWritten()
    {
        string dir = Path.Combine(Path.GetTempPath(), "adapterserve-demo-v2");
        if (File.Exists(Path.Combine(dir, "model.safetensors")) && File.Exists(Path.Combine(dir, "tokenizer.json"))) return dir;
        string staging = dir + "." + Guid.NewGuid().ToString("N");
        SyntheticModel.Write(staging, Config, Seed);
        try { Directory.Move(staging, dir); }
        catch (IOException) when (Directory.Exists(dir)) { Directory.Delete(staging, true); }   // another process won the race
        return dir;
    }
}
