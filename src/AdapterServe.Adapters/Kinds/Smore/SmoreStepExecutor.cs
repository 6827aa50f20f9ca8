using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// S'MoRE's share of one step. Short groups whose adapters sit in device slots, when at least two share a structure,
/// go through the slot path (<see cref="SmoreSlotStep"/>: per projection one fused tree per structure class, whatever
/// the number of adapters); every other (adapter, scale) group runs its tokens through its own module's fused tree
/// (<see cref="SmoreTree"/>: a fixed number of calls per sub-layer, whatever the experts, fan-outs or routing) and adds
/// <c>scale · y_delta</c> into its rows. Selections are tallied on the device in the step's tally shared by every
/// mixture kind (<see cref="ExpertUsage.JoinStep"/>), which reaches the host once per step, when the last kind completes.
/// </summary>
internal sealed class SmoreStepExecutor : MixtureStepExecutor
{
    private readonly (AdapterTokenGroup Group, SmoreWeights Weights)[] _groups;   // the per-group path
    private readonly SmoreSlotStep? _slots;

    public SmoreStepExecutor(IReadOnlyList<AdapterTokenGroup> groups, ExpertUsage usage) : base(usage.JoinStep())
    {
        var all = groups.Select(g => (g, g.Adapter.Modules as SmoreWeights
            ?? throw new InvalidOperationException($"{g.Adapter} is a '{g.Adapter.Kind}' adapter, not an S'MoRE one"))).ToList();
        _slots = SmoreSlotStep.TryBuild(all, Tally, out var rest);
        _groups = [.. rest];
    }

    protected override IDisposable? Slots => _slots;

    public override void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight)
    {
        _slots?.Apply(layer, projection, x, y);
        foreach (var (g, weights) in _groups)
        {
            if (weights.Module(layer, projection) is not { } module) continue;
            if (module.InFeatures != x.size(1) || module.OutFeatures != y.size(1))
                throw new InvalidOperationException(
                    $"{g.Adapter} has {projection.ShortName()} of layer {layer} as [{module.OutFeatures}, {module.InFeatures}], the step has [{y.size(1)}, {x.size(1)}]");
            var (delta, routing) = SmoreTree.Forward(module, g.Rows(x));                    // [n_g, d_out] float32
            SmoreTree.Record(Tally, weights.Site(layer, projection), module, routing);
            if (g.Scale != 1f) delta = TorchScalars.MulInPlace(delta, g.Scale);
            g.AddRows(y, delta.dtype == y.dtype ? delta : delta.to(y.dtype));
        }
    }
}
