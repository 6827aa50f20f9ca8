using AdapterServe.Adapters.Experts;
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
internal sealed class SmoreStepExecutor : IAdapterStepExecutor
{
    private readonly (AdapterTokenGroup Group, SmoreWeights Weights)[] _groups;   // the per-group path
    private readonly SmoreSlotStep? _slots;
    private readonly ExpertStepTally _tally;
    private bool _completed;

    public SmoreStepExecutor(IReadOnlyList<AdapterTokenGroup> groups, ExpertUsage usage)
    {
        var all = groups.Select(g => (g, g.Adapter.Modules as SmoreWeights
            ?? throw new InvalidOperationException($"{g.Adapter} is a '{g.Adapter.Kind}' adapter, not an S'MoRE one"))).ToList();
        _tally = usage.JoinStep();
        _slots = SmoreSlotStep.TryBuild(all, _tally, out var rest);
        _groups = [.. rest];
    }

    /// <summary>Groups served from the slot stacks in this step (0 when the slot path is not used).</summary>
    internal int SlotGroupCount => _slots?.GroupCount ?? 0;

    public void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight)
    {
        _slots?.Apply(layer, projection, x, y);
        foreach (var (g, weights) in _groups)
        {
            if (weights.Module(layer, projection) is not { } module) continue;
            if (module.InFeatures != x.size(1) || module.OutFeatures != y.size(1))
                throw new InvalidOperationException(
                    $"{g.Adapter} has {projection.ShortName()} of layer {layer} as [{module.OutFeatures}, {module.InFeatures}], the step has [{y.size(1)}, {x.size(1)}]");
            var (delta, routing) = SmoreTree.Forward(module, g.Rows(x));                    // [n_g, d_out] float32
            SmoreTree.Record(_tally, weights.Site(layer, projection), module, routing);
            if (g.Scale != 1f) delta = TorchScalars.MulInPlace(delta, g.Scale);
            g.AddRows(y, delta.dtype == y.dtype ? delta : delta.to(y.dtype));
        }
    }

    /// <summary>Leaves the step's shared tally (the last mixture kind of the step copies all counts to the host at once).</summary>
    public void Complete()
    {
        if (_completed) return;
        _completed = true;
        try { _tally.Leave(); }
        finally { _slots?.Dispose(); }
    }

    /// <summary>The forward threw: leaves the step's shared tally without counting (the step's counts are dropped, not copied).</summary>
    public void Abandon()
    {
        if (_completed) return;
        _completed = true;
        try { _tally.Abandon(); }
        finally { _slots?.Dispose(); }
    }
}
