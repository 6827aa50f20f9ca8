using System.Text.Json.Nodes;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Bench.Adapters;

/// <summary>
/// Writes mixture adapter directories with random weights (methods.md §4.1, §4.2): a LoRA-Mixer with its LoRA experts
/// embedded under <c>experts/&lt;name&gt;/</c> and one router per adapted module in <c>mixer_model.safetensors</c>, and
/// an OMoE with n experts per module in <c>adapter_model.safetensors</c>. Routers are random with a spread large enough
/// that tokens route to different experts; B is never zero (OMoE's Gram–Schmidt needs non-zero expert outputs).
/// </summary>
public static class MixtureWriters
{
    /// <summary>Names of the embedded experts: <c>expert-0</c> … <c>expert-{E-1}</c>.</summary>
    public static IReadOnlyList<string> ExpertNames(int experts) => Enumerable.Range(0, experts).Select(i => $"expert-{i}").ToList();

    /// <summary>A LoRA-Mixer over <paramref name="experts"/> embedded r-<paramref name="rank"/> LoRAs (expert i gets rank r and alpha 2r·(1 + i/4), so scalings differ).</summary>
    /// <param name="expertNames">Reference these registered adapters instead of embedding experts (no experts/ folder is written).</param>
    public static void WriteLoraMixer(string directory, ModelConfig model, int experts, int topK, int rank, IReadOnlyList<Projection> targets, int seed,
        IReadOnlyList<string>? expertNames = null, bool routerBias = true, bool renormalize = true, bool expertBias = false)
    {
        if (experts < 1) throw new ArgumentOutOfRangeException(nameof(experts), experts, "a mixer needs at least one expert");
        Directory.CreateDirectory(directory);
        var names = expertNames ?? ExpertNames(experts);
        if (expertNames is null)
            for (int i = 0; i < experts; i++)
                PeftLoraWriter.Write(Path.Combine(directory, "experts", names[i]), model, rank, targets, seed * 101 + i, alpha: 2.0 * rank * (1 + i / 4.0),
                    loraBias: expertBias && i % 2 == 1);

        var config = new JsonObject
        {
            ["peft_type"] = "LORA_MIXER",
            ["experts"] = new JsonArray(names.Select(n => (JsonNode)n).ToArray()),
            ["top_k"] = topK,
            ["renormalize"] = renormalize,
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode)t.ShortName()).ToArray()),
            ["base_model_name_or_path"] = "adapterserve-bench-synthetic",
        };
        File.WriteAllText(Path.Combine(directory, "adapter_config.json"), config.ToJsonString(ModelConfig.JsonWriteOptions));
        WriteRouters(Path.Combine(directory, "mixer_model.safetensors"), model, names.Count, targets, seed, "router.weight", routerBias ? "router.bias" : null);
    }

    /// <summary>An OMoE with <paramref name="experts"/> rank-<paramref name="rank"/> experts per module (lora_alpha 2r).</summary>
    public static void WriteOmoe(string directory, ModelConfig model, int experts, int rank, IReadOnlyList<Projection> targets, int seed,
        int? topK = null, string rescale = "norm")
    {
        Directory.CreateDirectory(directory);
        var shapes = Shapes(model);
        var config = new JsonObject
        {
            ["peft_type"] = "OMOE",
            ["num_experts"] = experts,
            ["r"] = rank,
            ["lora_alpha"] = 2.0 * rank,
            ["top_k"] = topK,
            ["rescale"] = rescale,
            ["eps"] = 1e-6,
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode)t.ShortName()).ToArray()),
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
                for (int i = 0; i < experts; i++)
                {
                    tensors.Add(new($"{prefix}.omoe_A.{i}", TorchScalars.Mul(randn([rank, inDim], generator: generator), 1 / Math.Sqrt(inDim))));        // [r, d_in]
                    tensors.Add(new($"{prefix}.omoe_B.{i}", TorchScalars.Mul(randn([outDim, rank], generator: generator), 0.1 / Math.Sqrt(rank)))); // [d_out, r]
                }
                tensors.Add(new($"{prefix}.omoe_router.weight", TorchScalars.Mul(randn([experts, inDim], generator: generator), 4.0 / Math.Sqrt(inDim)))); // [n, d_in]
            }
        SafetensorsWriter.Write(Path.Combine(directory, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Router tensors <c>{module}.{weightSuffix} [E, d_in]</c> (+ <c>{biasSuffix} [E]</c>) for every target of every layer.</summary>
    public static void WriteRouters(string path, ModelConfig model, int experts, IReadOnlyList<Projection> targets, int seed, string weightSuffix, string? biasSuffix)
    {
        var shapes = Shapes(model);
        using var scope = NewDisposeScope();
        using var generator = new Generator((ulong)seed * 7919 + 1);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        for (int layer = 0; layer < model.NumHiddenLayers; layer++)
            foreach (var p in targets)
            {
                var (inDim, _) = shapes.ProjectionShape(p);
                string prefix = "base_model.model." + ProjectionNames.ModulePath(layer, p);
                tensors.Add(new($"{prefix}.{weightSuffix}", TorchScalars.Mul(randn([experts, inDim], generator: generator), 4.0 / Math.Sqrt(inDim)))); // [E, d_in]
                if (biasSuffix is not null) tensors.Add(new($"{prefix}.{biasSuffix}", TorchScalars.Mul(randn([experts], generator: generator), 0.1)));   // [E]
            }
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        SafetensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    private static ModelConfig Shapes(ModelConfig model) =>
        model with { HeadDim = model.HeadDim > 0 ? model.HeadDim : model.HiddenSize / model.NumAttentionHeads };
}
