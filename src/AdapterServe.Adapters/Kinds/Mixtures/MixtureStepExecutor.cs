using AdapterServe.Adapters.Experts;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Mixtures;

/// <summary>
/// What the mixture kinds' step executors share: the step's expert tally, joined by each mixture kind of the step (the
/// last to leave copies every count to the host at once), and the kind's slot path for the step, freed when the step
/// completes or is abandoned.
/// </summary>
internal abstract class MixtureStepExecutor(ExpertStepTally tally) : IAdapterStepExecutor
{
    private bool _completed;

    protected ExpertStepTally Tally { get; } = tally;

    /// <summary>The kind's slot path for this step, or null when no group goes through it.</summary>
    protected abstract IDisposable? Slots { get; }

    public abstract void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight);

    /// <summary>Leaves the step's shared tally (the last mixture kind of the step copies all counts to the host at once).</summary>
    public void Complete()
    {
        if (_completed) return;
        _completed = true;
        try { Tally.Leave(); }
        finally { Slots?.Dispose(); }
    }

    /// <summary>The forward threw: leaves the step's shared tally without counting (the step's counts are dropped, not copied).</summary>
    public void Abandon()
    {
        if (_completed) return;
        _completed = true;
        try { Tally.Abandon(); }
        finally { Slots?.Dispose(); }
    }
}
