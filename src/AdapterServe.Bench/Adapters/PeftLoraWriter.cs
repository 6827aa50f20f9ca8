using System.Text.Json.Nodes;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Bench.Adapters;

/// <summary>
/// Writes a Hugging Face PEFT LoRA directory with random weights: <c>adapter_config.json</c> and
/// <c>adapter_model.safetensors</c> holding <c>base_model.model.&lt;module&gt;.lora_A.weight [r, d_in]</c> and
/// <c>lora_B.weight [d_out, r]</c> for every target projection of every layer. B is not zero (PEFT's initialisation
/// would make the adapter a no-op), so the adapter really changes the output.
/// </summary>
public static class PeftLoraWriter
{
    public static void Write(string directory, ModelConfig model, AdapterCase adapterCase, int seed) =>
        Write(directory, model, adapterCase.Rank, adapterCase.Targets, seed);

    /// <param name="alpha">lora_alpha; default 2r (scaling 2).</param>
    /// <param name="loraBias">PEFT's <c>lora_bias</c>: a <c>lora_B.bias [d_out]</c> per module.</param>
    public static void Write(string directory, ModelConfig model, int rank, IReadOnlyList<Projection> targets, int seed, double? alpha = null, bool loraBias = false)
    {
        if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), rank, "a LoRA rank is at least 1");
        if (targets.Count == 0) throw new ArgumentException("a LoRA adapter needs at least one target projection", nameof(targets));
        var shapes = model with { HeadDim = model.HeadDim > 0 ? model.HeadDim : model.HiddenSize / model.NumAttentionHeads };
        Directory.CreateDirectory(directory);

        var config = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = "adapterserve-bench-synthetic",
            ["r"] = rank,
            ["lora_alpha"] = alpha ?? 2.0 * rank,
            ["lora_dropout"] = 0.0,
            ["bias"] = "none",
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode)t.ShortName()).ToArray()),
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["use_rslora"] = false,
            ["use_dora"] = false,
            ["lora_bias"] = loraBias,
            ["modules_to_save"] = null,
        };
        File.WriteAllText(Path.Combine(directory, "adapter_config.json"), config.ToJsonString(ModelConfig.JsonWriteOptions));

        using var scope = NewDisposeScope();
        using var generator = new Generator((ulong)seed);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        for (int layer = 0; layer < model.NumHiddenLayers; layer++)
            foreach (var p in targets)
            {
                var (inDim, outDim) = shapes.ProjectionShape(p);
                string prefix = "base_model.model." + ProjectionNames.ModulePath(layer, p);
                tensors.Add(new(prefix + ".lora_A.weight", TorchScalars.Div(randn([rank, inDim], generator: generator), Math.Sqrt(inDim))));        // [r, d_in]
                tensors.Add(new(prefix + ".lora_B.weight", TorchScalars.Mul(randn([outDim, rank], generator: generator), 0.1 / Math.Sqrt(rank)))); // [d_out, r]
                if (loraBias) tensors.Add(new(prefix + ".lora_B.bias", TorchScalars.Mul(randn([outDim], generator: generator), 0.1)));          // [d_out]
            }
        SafetensorsWriter.Write(Path.Combine(directory, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }
}
