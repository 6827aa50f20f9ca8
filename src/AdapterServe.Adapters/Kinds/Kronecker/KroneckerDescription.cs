using AdapterServe.Modeling;

namespace AdapterServe.Adapters.Kinds.Kronecker;

public enum KroneckerKind { Lokr, Moka }

/// <summary>One adapted projection of a LoKr or MoKA adapter, as validated from its config and safetensors header. Plain data.</summary>
/// <param name="TensorPrefix">Key prefix in adapter_model.safetensors, e.g. <c>base_model.model.model.layers.0.self_attn.q_proj</c>.</param>
/// <param name="Scaling">LoKr: alpha/r of this module; MoKA: the config's <c>scaling</c>.</param>
/// <param name="Components">LoKr: the one shape <c>[out_l, in_m] ⊗ [out_k, in_n]</c>; MoKA: every component's shape, in index order.</param>
/// <param name="W1Rank">LoKr: inner rank of <c>lokr_w1_a·lokr_w1_b</c>, null when <c>lokr_w1</c> is stored whole.</param>
/// <param name="W2Rank">LoKr: inner rank of <c>lokr_w2_a·lokr_w2_b</c>, null when <c>lokr_w2</c> is stored whole.</param>
public sealed record KroneckerModuleSpec(
    int Layer,
    Projection Projection,
    string TensorPrefix,
    double Scaling,
    IReadOnlyList<KroneckerShape> Components,
    int? W1Rank = null,
    int? W2Rank = null)
{
    public string ModulePath => ProjectionNames.ModulePath(Layer, Projection);
}

/// <summary>What a validated LoKr or MoKA directory holds. Plain data: no tensors.</summary>
public sealed record KroneckerDescription(KroneckerKind Kind, IReadOnlyList<KroneckerModuleSpec> Modules, long WeightBytes)
{
    public IReadOnlyList<string> TargetModules => Modules.Select(m => m.Projection.ShortName()).Distinct().ToList();
}
