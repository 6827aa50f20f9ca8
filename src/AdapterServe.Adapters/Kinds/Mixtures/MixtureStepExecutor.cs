using AdapterServe.Adapters.Experts;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Mixtures;

/// <summary>A mixture kind's slot path for one step: adds every slotted group's delta at one projection; disposing frees what the step built.</summary>
internal interface IMixtureSlotStep : IDisposable
{
    void Apply(int layer, Projection projection, Tensor x, Tensor y);
}

/// <summary>Builds a mixture kind's slot path from the step's groups (null when too few qualify); <paramref name="rest"/> gets the groups it does not serve.</summary>
internal delegate IMixtureSlotStep? MixtureSlotStepBuilder<TWeights>(List<(AdapterTokenGroup Group, TWeights Weights)> groups, ExpertStepTally tally,
    out List<(AdapterTokenGroup Group, TWeights Weights)> rest);

/// <summary>
/// What the mixture kinds' step executors share: the step's expert tally, joined by each mixture kind of the step (the
/// last to leave copies every count to the host at once); the split of the kind's groups between its slot path (built
/// once per step, freed when the step completes or is abandoned) and the per-group path, which the kind supplies
/// (<see cref="ApplyGroup"/>).
/// </summary>
/// <typeparam name="TWeights">The kind's loaded weights of one adapter.</typeparam>
internal abstract class MixtureStepExecutor<TWeights> : IAdapterStepExecutor where TWeights : class
{
    private readonly (AdapterTokenGroup Group, TWeights Weights)[] _groups;   // the per-group path
    private readonly IMixtureSlotStep? _slots;
    private bool _completed;

    /// <param name="weightsOf">The kind's weights in an adapter's loaded modules, or null when they are another kind's.</param>
    /// <param name="kind">The kind, for the error when a group's adapter is not one (e.g. "a LoRA-Mixer").</param>
    protected MixtureStepExecutor(IReadOnlyList<AdapterTokenGroup> groups, ExpertStepTally tally, Func<IAdapterModules, TWeights?> weightsOf, string kind,
        MixtureSlotStepBuilder<TWeights> slots)
    {
        Tally = tally;
        var all = groups.Select(g => (g, weightsOf(g.Adapter.Modules) ?? throw new InvalidOperationException($"{g.Adapter} is a '{g.Adapter.Kind}' adapter, not {kind}"))).ToList();
        _slots = slots(all, tally, out var rest);
        _groups = [.. rest];
    }

    protected ExpertStepTally Tally { get; }

    public void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight)
    {
        _slots?.Apply(layer, projection, x, y);
        foreach (var (g, weights) in _groups) ApplyGroup(g, weights, layer, projection, x, y);
    }

    /// <summary>The per-group path: adds one group's <c>scale · delta</c> at this projection to its rows of <paramref name="y"/> (nothing where its adapter does not adapt it) and records its selections.</summary>
    protected abstract void ApplyGroup(AdapterTokenGroup group, TWeights weights, int layer, Projection projection, Tensor x, Tensor y);

    public void ApplySiblings(int layer, IReadOnlyList<Projection> projections, Tensor x, IReadOnlyList<Tensor> ys, IReadOnlyList<Tensor> baseWeights)
    {
        if (_slots is not null)
            for (int i = 0; i < projections.Count; i++) _slots.Apply(layer, projections[i], x, ys[i]);
        foreach (var (g, weights) in _groups) ApplyGroupSiblings(g, weights, layer, projections, x, ys);
    }

    /// <summary>
    /// The per-group path at sibling projections of one input (q|k|v, gate|up): <see cref="ApplyGroup"/> for each by
    /// default; a kind overrides it to run the siblings it adapts in one sequence of calls.
    /// </summary>
    protected virtual void ApplyGroupSiblings(AdapterTokenGroup group, TWeights weights, int layer, IReadOnlyList<Projection> projections, Tensor x, IReadOnlyList<Tensor> ys)
    {
        for (int i = 0; i < projections.Count; i++) ApplyGroup(group, weights, layer, projections[i], x, ys[i]);
    }

    /// <summary>Leaves the step's shared tally (the last mixture kind of the step copies all counts to the host at once).</summary>
    public void Complete()
    {
        if (_completed) return;
        _completed = true;
        try { Tally.Leave(); }
        finally { _slots?.Dispose(); }
    }

    /// <summary>The forward threw: leaves the step's shared tally without counting (the step's counts are dropped, not copied).</summary>
    public void Abandon()
    {
        if (_completed) return;
        _completed = true;
        try { Tally.Abandon(); }
        finally { _slots?.Dispose(); }
    }
}
