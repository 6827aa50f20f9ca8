using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Mixtures;

/// <summary>
/// Where a mixture adapter's modules can run side by side: the sibling projections of one layer
/// (<see cref="ProjectionNames.Siblings"/>: q|k|v, gate|up, one input) that it adapts with compatible modules.
/// </summary>
internal static class SiblingModules
{
    /// <summary>
    /// Per layer and sibling set, the set's projections that <paramref name="modules"/> adapts (in output order) when
    /// there are at least two and every one is <paramref name="compatible"/> with the first.
    /// </summary>
    public static IEnumerable<(int Layer, Projection[] Projections)> Find<TModule>(IReadOnlyDictionary<(int Layer, Projection Projection), TModule> modules,
        Func<TModule, TModule, bool> compatible)
    {
        foreach (int layer in modules.Keys.Select(k => k.Layer).Distinct().Order())
            foreach (var set in ProjectionNames.Siblings)
            {
                var adapted = set.Where(p => modules.ContainsKey((layer, p))).ToArray();
                if (adapted.Length >= 2 && adapted.All(p => compatible(modules[(layer, adapted[0])], modules[(layer, p)])))
                    yield return (layer, adapted);
            }
    }

    /// <summary>The key of a layer's sibling set: the set's first projection (whichever of them the adapter adapts).</summary>
    public static (int Layer, Projection First) Key(int layer, Projection projection) =>
        (layer, ProjectionNames.Siblings.FirstOrDefault(s => s.Contains(projection))?[0] ?? projection);

    /// <summary>
    /// Each of <paramref name="adapted"/>'s output block among the hook's <paramref name="ys"/> for
    /// <paramref name="projections"/>, checked to fit <paramref name="x"/> and sibling j's module shape
    /// <paramref name="shape"/>(j) (<see cref="AdapterTokenGroup.EnsureFits"/>).
    /// </summary>
    public static Tensor[] Outputs(LoadedAdapter adapter, int layer, IReadOnlyList<Projection> adapted, Func<int, (long Out, long In)> shape,
        IReadOnlyList<Projection> projections, Tensor x, IReadOnlyList<Tensor> ys)
    {
        var outputs = new Tensor[adapted.Count];
        for (int j = 0; j < outputs.Length; j++)
        {
            for (int i = 0; i < projections.Count; i++)
                if (projections[i] == adapted[j]) outputs[j] = ys[i];
            var (dOut, dIn) = shape(j);
            AdapterTokenGroup.EnsureFits(adapter, layer, adapted[j], dOut, dIn, x, outputs[j]);
        }
        return outputs;
    }
}
