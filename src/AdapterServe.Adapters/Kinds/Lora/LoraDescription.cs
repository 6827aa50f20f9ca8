using AdapterServe.Modeling;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>One adapted projection of one layer, as validated from the adapter's config and safetensors header.</summary>
/// <param name="Rank">r of this module (from the lora_A shape; rank_pattern applied).</param>
/// <param name="Scaling">s = alpha/r, or alpha/√r with rsLoRA (alpha_pattern applied).</param>
/// <param name="TensorPrefix">Key prefix in adapter_model.safetensors, e.g. <c>base_model.model.model.layers.0.self_attn.q_proj</c>.</param>
public sealed record AdapterModuleSpec(int Layer, Projection Projection, int Rank, double Scaling, bool HasBias, bool HasMagnitude, bool HasDiag, string TensorPrefix);

/// <summary>A validated LoRA-family adapter (LoRA, rsLoRA, DoRA, KaSA). Plain data: no tensors.</summary>
/// <param name="Kind"><see cref="AdapterKind.Lora"/>, <see cref="AdapterKind.Dora"/> or <see cref="AdapterKind.Kasa"/>.</param>
/// <param name="KasaTruncation">"peft" (keep k − r components, default) or "official" (keep d_in − r).</param>
public sealed record LoraDescription(
    AdapterKind Kind,
    IReadOnlyList<AdapterModuleSpec> Modules,
    bool FanInFanOut,
    string KasaTruncation,
    long WeightBytes) : AdapterDescription(Kind, WeightBytes)
{
    public override IAdapterKindHandler Handler => LoraKind.Instance;
    public override int MaxRank => Modules.Count == 0 ? 0 : Modules.Max(m => m.Rank);
    public override IReadOnlyList<string> TargetModules => Modules.Select(m => m.Projection.ShortName()).Distinct().ToList();
    public override IReadOnlyList<AdapterModuleSummary> ModuleSummaries =>
        Modules.Select(m => new AdapterModuleSummary(m.Layer, m.Projection, m.Rank, new Dictionary<string, object>
        {
            ["scaling"] = m.Scaling,
            ["bias"] = m.HasBias,
            ["magnitude"] = m.HasMagnitude,
            ["diag"] = m.HasDiag,
        })).ToList();

    /// <summary>DoRA rescales whole weight rows by <c>m / ‖W0 + ΔW‖</c>: a sum of deltas is not the sum of their effects.</summary>
    public override string? NotMixable =>
        Kind == AdapterKind.Dora || Modules.Any(m => m.HasMagnitude) ? "a DoRA adapter: DoRA rescales whole weight rows" : null;
}
