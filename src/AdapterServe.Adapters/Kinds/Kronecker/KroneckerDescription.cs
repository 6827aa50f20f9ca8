using AdapterServe.Modeling;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>One adapted projection of a LoKr or MoKA adapter, as validated from its config and safetensors header. Plain data.</summary>
/// <param name="TensorPrefix">Key prefix in adapter_model.safetensors, e.g. <c>base_model.model.model.layers.0.self_attn.q_proj</c>.</param>
/// <param name="Rank">LoKr: r of this module (r / rank_pattern); MoKA: 0 (no rank).</param>
/// <param name="Scaling">LoKr: alpha/r of this module; MoKA: the config's <c>scaling</c>.</param>
/// <param name="Components">LoKr: the one shape <c>[out_l, in_m] ⊗ [out_k, in_n]</c>; MoKA: every component's shape, in index order.</param>
/// <param name="W1Rank">LoKr: inner rank of <c>lokr_w1_a·lokr_w1_b</c>, null when <c>lokr_w1</c> is stored whole.</param>
/// <param name="W2Rank">LoKr: inner rank of <c>lokr_w2_a·lokr_w2_b</c>, null when <c>lokr_w2</c> is stored whole.</param>
public sealed record KroneckerModuleSpec(
    int Layer,
    Projection Projection,
    string TensorPrefix,
    int Rank,
    double Scaling,
    IReadOnlyList<KroneckerShape> Components,
    int? W1Rank = null,
    int? W2Rank = null)
{
    public string ModulePath => ProjectionNames.ModulePath(Layer, Projection);
}

/// <summary>A validated LoKr (<see cref="AdapterKind.Lokr"/>) or MoKA (<see cref="AdapterKind.Moka"/>) adapter. Plain data: no tensors.</summary>
public sealed record KroneckerDescription(AdapterKind Kind, IReadOnlyList<KroneckerModuleSpec> Modules, long WeightBytes)
    : AdapterDescription(Kind, WeightBytes)
{
    public bool IsMoka => Kind == AdapterKind.Moka;
    public override IAdapterKindHandler Handler => KroneckerKind.Instance;
    public override int MaxRank => Modules.Count == 0 ? 0 : Modules.Max(m => m.Rank);
    public override IReadOnlyList<string> TargetModules => Modules.Select(m => m.Projection.ShortName()).Distinct().ToList();

    /// <summary>
    /// Per module: the scaling and the factor shapes. LoKr: <c>w1</c>, <c>w2</c> (as served) and, for a low-rank factor,
    /// <c>w1_rank</c>/<c>w2_rank</c>; MoKA: <c>components</c> (<c>[ma, na, mb, nb]</c> each) and their count.
    /// </summary>
    public override IReadOnlyList<AdapterModuleSummary> ModuleSummaries => Modules.Select(m =>
    {
        var details = new Dictionary<string, object> { ["scaling"] = m.Scaling };
        if (IsMoka)
        {
            details["components"] = "[" + string.Join(", ", m.Components.Select(c => $"[{c.Ma}, {c.Na}, {c.Mb}, {c.Nb}]")) + "]";
            details["component_count"] = m.Components.Count;
        }
        else
        {
            var s = m.Components[0];
            details["w1"] = $"[{s.Ma}, {s.Na}]";
            details["w2"] = $"[{s.Mb}, {s.Nb}]";
            if (m.W1Rank is { } r1) details["w1_rank"] = r1;
            if (m.W2Rank is { } r2) details["w2_rank"] = r2;
        }
        return new AdapterModuleSummary(m.Layer, m.Projection, m.Rank, details);
    }).ToList();
}
