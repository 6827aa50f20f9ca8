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
internal sealed class SmoreStepExecutor(IReadOnlyList<AdapterTokenGroup> groups, ExpertStepTally tally)
    : MixtureStepExecutor<SmoreWeights>(groups, tally, m => m as SmoreWeights, "an S'MoRE one", SmoreSlotStep.TryBuild)
{
    protected override void ApplyGroup(AdapterTokenGroup g, SmoreWeights weights, int layer, Projection projection, Tensor x, Tensor y)
    {
        if (weights.Module(layer, projection) is not { } module) return;
        AdapterTokenGroup.EnsureFits(g.Adapter, layer, projection, module.OutFeatures, module.InFeatures, x, y);
        var (delta, routing) = SmoreTree.Forward(module, g.Rows(x));                       // [n_g, d_out] float32
        SmoreTree.Record(Tally, weights.Site(layer, projection), module, routing);
        g.AddScaledRows(y, delta);
    }

    /// <summary>The siblings the adapter adapts with one structure (<see cref="SmoreSiblings"/>), as the trees of one fused pass.</summary>
    protected override void ApplyGroupSiblings(AdapterTokenGroup g, SmoreWeights weights, int layer, IReadOnlyList<Projection> projections, Tensor x, IReadOnlyList<Tensor> ys)
    {
        if (weights.Siblings(layer, projections) is not { } siblings)
        {
            base.ApplyGroupSiblings(g, weights, layer, projections, x, ys);
            return;
        }
        var outputs = SiblingModules.Outputs(g.Adapter, layer, siblings.Projections, j => (siblings.Modules[j].OutFeatures, siblings.Modules[j].InFeatures), projections, x, ys);
        var (deltas, selections) = siblings.Deltas(g.Rows(x));                              // per sibling [n_g, d_out] float32, [n_g, Σ P_l]
        for (int j = 0; j < outputs.Length; j++)
        {
            Tally.RecordTopK(weights.Site(layer, siblings.Projections[j]), selections[j]);
            g.AddScaledRows(outputs[j], deltas[j]);
        }
    }
}
