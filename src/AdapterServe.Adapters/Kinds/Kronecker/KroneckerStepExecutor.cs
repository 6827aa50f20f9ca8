using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// The Kronecker kinds' share of one step. Several short groups of slotted adapters (decode with many LoKr/MoKA
/// adapters) go through <see cref="KroneckerSlotStep"/>: a fixed number of batched calls per projection and term
/// layout whatever the number of adapters. Every other group adds <c>scale · Σ_terms A X Bᵀ</c> for its tokens:
/// straight into a view of its output rows when they are contiguous (the engine orders each step by adapter, so they
/// usually are), else gathered and scattered back with <c>index_add_</c>. No loop over tokens, no host synchronisation.
/// </summary>
internal sealed class KroneckerStepExecutor : IAdapterStepExecutor
{
    private readonly (AdapterTokenGroup Group, KroneckerModules Modules)[] _groups;   // the per-group path
    private readonly KroneckerSlotStep? _slots;

    public KroneckerStepExecutor(IReadOnlyList<AdapterTokenGroup> groups)
    {
        var all = groups.Select(g => (g, g.Adapter.Modules as KroneckerModules
            ?? throw new ArgumentException($"{g.Adapter} is a '{g.Adapter.Kind}' adapter, not a LoKr or MoKA one", nameof(groups)))).ToList();
        _slots = KroneckerSlotStep.TryBuild(all, out var rest);
        _groups = [.. rest];
    }

    public void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight)
    {
        _slots?.Apply(layer, projection, x, y);
        foreach (var (g, modules) in _groups)
        {
            if (modules.Module(layer, projection) is not { } w) continue;
            AdapterTokenGroup.EnsureFits(g.Adapter, layer, projection, w.OutFeatures, w.InFeatures, x, y);

            if (g.IsContiguous) w.AddTo(g.Rows(x), g.Rows(y), g.Scale);                // [n_g, d_out] rows updated in place
            else
            {
                var delta = w.Delta(g.Rows(x));                                        // [n_g, d_out]
                g.AddScaledRows(y, delta);
            }
        }
    }

    public void Complete() => _slots?.Dispose();

    public void Abandon() => _slots?.Dispose();
}
