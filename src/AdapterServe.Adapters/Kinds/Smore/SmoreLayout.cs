namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>One tensor an S'MoRE module stores, with the shape the config and the base projection imply.</summary>
/// <param name="Suffix">Key after the module prefix, e.g. <c>moe_A.0</c>.</param>
/// <param name="Why">How the shape follows from the config, for error messages.</param>
/// <param name="Optional">May be absent (the noisy gate's training-only noise weight).</param>
public sealed record SmoreTensor(string Suffix, long[] Shape, string Why, bool Optional = false);

/// <summary>
/// The tensors of one S'MoRE-adapted projection (methods.md §4.3, names of the official fork): which keys must be there
/// and the shape of each, derived from the config and the base projection's <c>[d_out, d_in]</c>. The chain
/// <c>d_0 = 0, d_{l+1} = d_l + s_l·r_l</c> is what makes the levels fit together.
/// </summary>
public static class SmoreLayout
{
    public static IReadOnlyList<SmoreTensor> Tensors(SmoreConfig config, int dIn, int dOut)
    {
        int levels = config.Levels;
        var signature = SmoreSignature.Of(config, dIn, dOut);
        int down = signature.DownDim;
        var list = new List<SmoreTensor>
        {
            new("moe_downproj_x.weight", [down, dIn], $"[dim_downproj_x, d_in] = [{down}, {dIn}]"),
            new("moe_downproj_x.bias", [down], $"[dim_downproj_x] = [{down}]"),
        };
        for (int l = 0; l < levels; l++)
        {
            int s = config.NumExperts[l], r = config.ExpertDims[l], g = config.GateDims[l];
            int d = signature.HiddenDim(l), dNext = signature.HiddenDim(l + 1);
            string chain = $"d_{l + 1} = d_{l} + s_{l}·r_{l} = {d} + {s}·{r} = {dNext}";
            list.Add(new($"moe_A.{l}", [s, r, dIn], $"[num_experts[{l}], expert_dims[{l}], d_in] = [{s}, {r}, {dIn}]"));
            list.Add(new($"moe_A_bias.{l}", [s, r], $"[num_experts[{l}], expert_dims[{l}]] = [{s}, {r}]"));
            list.Add(new($"moe_B.{l}", [s, dNext, r], $"[s_{l}, d_{l + 1}, r_{l}] = [{s}, {dNext}, {r}] with {chain}"));
            list.Add(new($"moe_B_bias.{l}", [s, dNext], $"[s_{l}, d_{l + 1}] = [{s}, {dNext}] with {chain}"));
            if (l >= 1)
            {
                list.Add(new($"moe_W.{l}", [dNext, d], $"[d_{l + 1}, d_{l}] = [{dNext}, {d}] with {chain}"));
                list.Add(new($"moe_W_bias.{l}", [dNext], $"[d_{l + 1}] = [{dNext}] with {chain}"));
            }
            if (config.ExpertActivation == SmoreActivation.Prelu)
                list.Add(new($"moe_expert_act_param.{l}", [1], "[1] (the learned PReLU slope of sub-layer " + l + ")"));

            int gateIn = signature.GateInputDim(l);
            string gateWhy = $"dim_downproj_x + gate_dims of the sub-layers above {l} = {gateIn}";
            list.Add(new($"moe_gate.{l}.mlp.0.weight", [g, gateIn], $"[gate_dims[{l}], {gateWhy}] = [{g}, {gateIn}]"));
            list.Add(new($"moe_gate.{l}.mlp.0.bias", [g], $"[gate_dims[{l}]] = [{g}]"));
            if (config.GateActivation == SmoreActivation.Prelu)
                list.Add(new($"moe_gate.{l}.mlp.1.weight", [1], "[1] (the learned PReLU slope of the router)"));
            list.Add(new($"moe_gate.{l}.mlp.2.weight", [g, g], $"[gate_dims[{l}], gate_dims[{l}]] = [{g}, {g}]"));
            list.Add(new($"moe_gate.{l}.mlp.2.bias", [g], $"[gate_dims[{l}]] = [{g}]"));
            list.Add(new($"moe_gate.{l}.keys", [s, g], $"[num_experts[{l}], gate_dims[{l}]] = [{s}, {g}]"));
            if (config.GateType == SmoreGateType.NoisyTopK)
                list.Add(new($"moe_gate.{l}.weight_noise.weight", [s, gateIn], $"[num_experts[{l}], {gateWhy}] = [{s}, {gateIn}] (training-only noise, not used)", Optional: true));
        }
        int dLast = signature.HiddenDim(levels);
        list.Add(new("moe_W_final", [dOut, dLast], $"[d_out, d_L] = [{dOut}, {dLast}] (d_L = Σ s_l·r_l)"));
        list.Add(new("moe_W_final_bias", [dOut], $"[d_out] = [{dOut}]"));
        return list;
    }

    /// <summary>Index where the S'MoRE part (<c>moe_…</c>) of a module key starts, or −1 when the key has none.</summary>
    public static int SuffixStart(string moduleKey)
    {
        int i = moduleKey.IndexOf(".moe_", StringComparison.Ordinal);
        return i < 0 ? -1 : i + 1;
    }
}
