namespace AdapterServe.Modeling;

/// <summary>
/// Writes a complete Hugging Face model directory (config.json, model.safetensors, tokenizer.json,
/// tokenizer_config.json, generation_config.json) with random weights from a fixed seed. Used by the embedded
/// demo model, the tests and the benchmark; everything it writes is then loaded through the real loader.
/// </summary>
public static partial class SyntheticModel
{
    /// <summary>Writes the model directory; the vocabulary size comes from the generated tokenizer when <paramref name="config"/> has none larger.</summary>
    public static void Write(string directory, ModelConfig config, int seed = 0) => throw new NotImplementedException();
}
