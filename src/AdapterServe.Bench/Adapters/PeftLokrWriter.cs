using System.Text.Json.Nodes;
using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Bench.Adapters;

/// <summary>
/// Writes a Hugging Face PEFT LoKr directory with random weights for any model size: every target projection of every
/// layer gets the factors PEFT itself would create (<see cref="LokrFactorization.Layout"/>: PEFT's
/// <c>factorization</c> of d_out and d_in, w2 low-rank when <c>r &lt; max(out_k, in_n) / 2</c>, w1 low-rank only with
/// <c>decompose_both</c>), saved under PEFT's key names. alpha = r (scaling 1); factors are scaled so the delta's
/// output is about a tenth of the input's size, like <see cref="PeftLoraWriter"/>'s.
/// </summary>
public static class PeftLokrWriter
{
    public static void Write(string directory, ModelConfig model, AdapterCase adapterCase, int seed) =>
        Write(directory, model, adapterCase.Rank, adapterCase.Targets, seed);

    public static void Write(string directory, ModelConfig model, int rank, IReadOnlyList<Projection> targets, int seed,
        bool decomposeBoth = false, int decomposeFactor = -1)
    {
        if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), rank, "a LoKr rank is at least 1");
        if (targets.Count == 0) throw new ArgumentException("a LoKr adapter needs at least one target projection", nameof(targets));
        var shapes = model with { HeadDim = model.HeadDim > 0 ? model.HeadDim : model.HiddenSize / model.NumAttentionHeads };
        Directory.CreateDirectory(directory);

        var config = new JsonObject
        {
            ["peft_type"] = "LOKR",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = "adapterserve-bench-synthetic",
            ["r"] = rank,
            ["alpha"] = rank,
            ["rank_dropout"] = 0.0,
            ["module_dropout"] = 0.0,
            ["init_weights"] = true,
            ["use_effective_conv2d"] = false,
            ["decompose_both"] = decomposeBoth,
            ["decompose_factor"] = decomposeFactor,
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode)t.ShortName()).ToArray()),
            ["rank_pattern"] = new JsonObject(),
            ["alpha_pattern"] = new JsonObject(),
            ["inference_mode"] = true,
            ["modules_to_save"] = null,
        };
        File.WriteAllText(Path.Combine(directory, "adapter_config.json"), config.ToJsonString(ModelConfig.JsonWriteOptions));

        using var scope = NewDisposeScope();
        using var generator = new Generator((ulong)seed);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        Tensor Random(long rows, long cols, double std) => TorchScalars.Mul(randn([rows, cols], generator: generator), std);
        void Factor(string name, bool whole, int rows, int cols, double std)
        {
            if (whole) tensors.Add(new(name, Random(rows, cols, std)));                                 // [rows, cols]
            else
            {
                tensors.Add(new(name + "_a", Random(rows, rank, 1 / Math.Sqrt(rank))));                   // [rows, r]
                tensors.Add(new(name + "_b", Random(rank, cols, std)));                                   // [r, cols]
            }
        }
        for (int layer = 0; layer < model.NumHiddenLayers; layer++)
            foreach (var p in targets)
            {
                var (inDim, outDim) = shapes.ProjectionShape(p);
                var layout = LokrFactorization.Layout(outDim, inDim, rank, decomposeBoth, decomposeFactor);
                var s = layout.Shape;
                string prefix = "base_model.model." + ProjectionNames.ModulePath(layer, p);
                Factor(prefix + ".lokr_w1", layout.FullW1, s.Ma, s.Na, 1 / Math.Sqrt(s.Na));            // [out_l, in_m]
                Factor(prefix + ".lokr_w2", layout.FullW2, s.Mb, s.Nb, 0.1 / Math.Sqrt(s.Nb));          // [out_k, in_n]
            }
        SafetensorsWriter.Write(Path.Combine(directory, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }
}
