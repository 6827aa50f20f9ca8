using System.Text.Json.Nodes;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Bench.Adapters;

/// <summary>The tree of a bench S'MoRE adapter; lists per sub-layer, 0 = leaf.</summary>
public sealed record SmoreTreeShape(int[] Experts, int[] Active, int[] Ranks, int GateDim = 32, int DownDim = 32, string GateType = "noisy_topk", string Activation = "tanh")
{
    /// <summary>d_l: d_0 = 0, d_{l+1} = d_l + s_l·r_l.</summary>
    public int Dim(int level) => Enumerable.Range(0, level).Sum(l => Experts[l] * Ranks[l]);
}

/// <summary>
/// Writes an S'MoRE directory in the official fork's format (<c>peft_type</c> HIER_MOE, <c>moe_arch</c> smore) with
/// random weights: <c>adapter_config.json</c> and <c>adapter_model.safetensors</c> holding, per target projection of
/// every layer, <c>moe_downproj_x</c>, per sub-layer <c>moe_A/moe_A_bias/moe_B/moe_B_bias</c> (+ <c>moe_W/moe_W_bias</c>
/// above the leaf) and the router <c>moe_gate.{l}.mlp.{0,2}</c> + <c>keys</c>, and <c>moe_W_final(_bias)</c>
/// (methods.md §4.3). Nothing is zero-initialised, so the adapter really changes the output and really routes.
/// </summary>
public static class SmoreWriter
{
    /// <summary>The bench's <c>smore-2x4</c> tree: 2 sub-layers of 4 experts, top-2 of each, rank 4 each (d_L = 32).</summary>
    public static readonly SmoreTreeShape TwoByFour = new([4, 4], [2, 2], [4, 4]);

    public static void Write(string directory, ModelConfig model, AdapterCase adapterCase, int seed) =>
        Write(directory, model, TwoByFour, adapterCase.Targets, seed);

    public static void Write(string directory, ModelConfig model, SmoreTreeShape tree, IReadOnlyList<Projection> targets, int seed)
    {
        if (tree.Experts.Length == 0 || tree.Active.Length != tree.Experts.Length || tree.Ranks.Length != tree.Experts.Length)
            throw new ArgumentException("an S'MoRE tree needs one experts/active/rank entry per sub-layer", nameof(tree));
        if (targets.Count == 0) throw new ArgumentException("an S'MoRE adapter needs at least one target projection", nameof(targets));
        var shapes = model with { HeadDim = model.HeadDim > 0 ? model.HeadDim : model.HiddenSize / model.NumAttentionHeads };
        Directory.CreateDirectory(directory);
        int levels = tree.Experts.Length;

        static JsonArray Ints(IEnumerable<int> values) => new(values.Select(v => (JsonNode)v).ToArray());
        var config = new JsonObject
        {
            ["peft_type"] = "HIER_MOE",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = "adapterserve-bench-synthetic",
            ["moe_arch"] = "smore",
            ["num_experts"] = Ints(tree.Experts),
            ["num_active"] = Ints(tree.Active),
            ["expert_dims"] = Ints(tree.Ranks),
            ["gate_dims"] = Ints(Enumerable.Repeat(tree.GateDim, levels)),
            ["lora_alpha"] = null,
            ["dim_downproj_x"] = tree.DownDim,
            ["gate_type"] = tree.GateType,
            ["gate_arch"] = "mlp",
            ["gate_act_fn"] = "relu",
            ["expert_act_fn"] = tree.Activation,
            ["activation_position"] = "all",
            ["layer_forward_mode"] = "subgraph",
            ["init_method"] = "b_zero",
            ["is_shared_expert_pool"] = false,
            ["balance_loss_weight"] = 0.01,
            ["moe_dropout"] = 0.0,
            ["bias"] = "none",
            ["modules_to_save"] = null,
            ["inference_mode"] = true,
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
                void Add(string suffix, long[] shape, double std) =>
                    tensors.Add(new($"{prefix}.{suffix}", TorchScalars.Mul(randn(shape, generator: generator), std)));

                Add("moe_downproj_x.weight", [tree.DownDim, inDim], 1 / Math.Sqrt(inDim));                     // [d_down, d_in]
                Add("moe_downproj_x.bias", [tree.DownDim], 0.01);                                            // [d_down]
                for (int l = 0; l < levels; l++)
                {
                    int s = tree.Experts[l], r = tree.Ranks[l], d = tree.Dim(l), dNext = tree.Dim(l + 1);
                    int gateIn = tree.DownDim + tree.GateDim * (levels - 1 - l);
                    Add($"moe_A.{l}", [s, r, inDim], 1 / Math.Sqrt(inDim));                                   // [s, r, d_in]
                    Add($"moe_A_bias.{l}", [s, r], 0.01);                                                    // [s, r]
                    Add($"moe_B.{l}", [s, dNext, r], 1 / Math.Sqrt(r));                                       // [s, d_{l+1}, r]
                    Add($"moe_B_bias.{l}", [s, dNext], 0.01);                                                // [s, d_{l+1}]
                    if (l >= 1)
                    {
                        Add($"moe_W.{l}", [dNext, d], 1 / Math.Sqrt(d));                                      // [d_{l+1}, d_l]
                        Add($"moe_W_bias.{l}", [dNext], 0.01);                                               // [d_{l+1}]
                    }
                    Add($"moe_gate.{l}.mlp.0.weight", [tree.GateDim, gateIn], 1 / Math.Sqrt(gateIn));        // [d_g, gate input]
                    Add($"moe_gate.{l}.mlp.0.bias", [tree.GateDim], 0.01);
                    Add($"moe_gate.{l}.mlp.2.weight", [tree.GateDim, tree.GateDim], 1 / Math.Sqrt(tree.GateDim)); // [d_g, d_g]
                    Add($"moe_gate.{l}.mlp.2.bias", [tree.GateDim], 0.01);
                    Add($"moe_gate.{l}.keys", [s, tree.GateDim], 1.0);                                       // [s, d_g]
                }
                Add("moe_W_final", [outDim, tree.Dim(levels)], 0.1 / Math.Sqrt(tree.Dim(levels)));          // [d_out, d_L]
                Add("moe_W_final_bias", [outDim], 0.001);                                                    // [d_out]
            }
        SafetensorsWriter.Write(Path.Combine(directory, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }
}
