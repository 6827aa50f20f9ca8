using AdapterServe.Adapters.Experts;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// One S'MoRE adapter's modules at the sibling projections of one layer that it adapts with the same structure (gate
/// and up: <see cref="ProjectionNames.Siblings"/>, one input), stored as one set of trees <c>[J, ...]</c> so that a step
/// runs them as J trees of one fused pass (<see cref="SmoreTree"/>, the code the slot path runs for J adapters), not J
/// passes. Exactly the per-projection result. Owns the stacked trees; its modules hold views of them.
/// </summary>
public sealed class SmoreSiblings : IDisposable
{
    private readonly SmoreTensors _trees;     // [J, ...]

    private SmoreSiblings(IReadOnlyList<Projection> projections, IReadOnlyList<SmoreModule> modules, SmoreTensors trees)
    {
        Projections = projections;
        Modules = modules;
        _trees = trees;
    }

    /// <summary>The adapted siblings, in the model's output order.</summary>
    public IReadOnlyList<Projection> Projections { get; }
    /// <summary>Per sibling its module (views of the stacked trees).</summary>
    public IReadOnlyList<SmoreModule> Modules { get; }

    /// <summary>
    /// Stacks <paramref name="modules"/> (one adapter's, one per projection of <paramref name="projections"/>, of one
    /// structure); they are disposed and replaced by views (<see cref="Modules"/>).
    /// </summary>
    internal static SmoreSiblings Of(IReadOnlyList<Projection> projections, IReadOnlyList<SmoreModule> modules)
    {
        using var inferenceOff = inference_mode(false);
        var trees = SmoreTensors.Concatenate([.. modules.Select(m => m.Tree)]);
        var views = new SmoreModule[modules.Count];
        for (int j = 0; j < modules.Count; j++)
        {
            int tree = j;
            views[j] = modules[j].WithTree(trees.Map(t => t.narrow(0, tree, 1).DetachFromDisposeScope(), t => t.view(t.shape).DetachFromDisposeScope())); // [1, ...] views
            modules[j].Dispose();
        }
        return new SmoreSiblings(projections, views, trees);
    }

    /// <summary>
    /// Every sibling's contribution for the tokens <paramref name="x"/> <c>[N, d_in]</c>: per sibling j the delta
    /// <c>[N, d_out]</c> (float32) and its selections labelled for the tally (<see cref="SmoreTree.Labelled"/>, <c>[N, Σ P_l]</c>).
    /// </summary>
    public (Tensor[] Deltas, Tensor[] Selections) Deltas(Tensor x)
    {
        int siblings = Modules.Count;
        long n = x.size(0);
        var x32 = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);                     // [N, d_in]
        var projected = SmoreTree.Project(_trees, x32.unsqueeze(0).expand(siblings, n, x.size(1))); // [J, N, d_down + Σ s·r]
        var (deltas, routing) = SmoreTree.Apply(_trees, projected);                                 // [J, N, d_out], [J, N, P_l]
        var labelled = SmoreTree.Labelled(_trees, routing);                                         // [J, N, Σ P_l]
        return ([.. Enumerable.Range(0, siblings).Select(j => deltas.select(0, j))], [.. Enumerable.Range(0, siblings).Select(j => labelled.select(0, j))]);
    }

    /// <summary>Frees the stacked trees (the modules' views are disposed by their owner).</summary>
    public void Dispose() => _trees.Dispose();
}
