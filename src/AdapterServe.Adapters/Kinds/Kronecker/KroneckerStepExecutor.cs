using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// The Kronecker kinds' share of one step: per adapted projection, each (adapter, scale) group adds
/// <c>scale · Σ_terms A X Bᵀ</c> for its tokens: straight into a view of its output rows when they are contiguous
/// (the engine orders each step by adapter, so they usually are), else gathered and scattered back with
/// <c>index_add_</c>. A fixed number of native calls per group and distinct component shape; no loop over tokens,
/// no host synchronisation.
/// </summary>
internal sealed class KroneckerStepExecutor(IReadOnlyList<AdapterTokenGroup> groups) : IAdapterStepExecutor
{
    private readonly (AdapterTokenGroup Group, KroneckerModules Modules)[] _groups =
        [.. groups.Select(g => (g, g.Adapter.Modules as KroneckerModules
            ?? throw new ArgumentException($"{g.Adapter} is a '{g.Adapter.Kind}' adapter, not a LoKr or MoKA one", nameof(groups))))];

    public void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight)
    {
        foreach (var (g, modules) in _groups)
        {
            if (modules.Module(layer, projection) is not { } w) continue;
            if (w.InFeatures != x.size(1) || w.OutFeatures != y.size(1))
                throw new InvalidOperationException(
                    $"{g.Adapter} has {projection.ShortName()} of layer {layer} as [{w.OutFeatures}, {w.InFeatures}], the step has [{y.size(1)}, {x.size(1)}]");

            if (g.IsContiguous) w.AddTo(g.Rows(x), g.Rows(y), g.Scale);                // [n_g, d_out] rows updated in place
            else
            {
                var delta = w.Delta(g.Rows(x));                                        // [n_g, d_out]
                if (g.Scale != 1f) delta = TorchScalars.MulInPlace(delta, g.Scale);
                g.AddRows(y, delta.dtype == y.dtype ? delta : delta.to(y.dtype));
            }
        }
    }

    public void Complete() { }

    public void Abandon() { }
}
