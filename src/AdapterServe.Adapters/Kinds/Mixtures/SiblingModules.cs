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
    private static IEnumerable<(int Layer, Projection[] Projections)> Find<TModule>(IReadOnlyDictionary<(int Layer, Projection Projection), TModule> modules,
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

    /// <summary>
    /// Stores side by side the modules <see cref="Find"/> finds: <paramref name="store"/> takes a set's modules over
    /// (projections in output order), and their entries in <paramref name="modules"/> become its views
    /// (<paramref name="views"/>). Each stored set goes into <paramref name="into"/> as soon as it exists, so a caller that
    /// catches a failure can dispose what was stored.
    /// </summary>
    public static void StoreSideBySide<TModule, TSiblings>(Dictionary<(int Layer, Projection Projection), TModule> modules, Func<TModule, TModule, bool> compatible,
        Func<Projection[], TModule[], TSiblings> store, Func<TSiblings, IReadOnlyList<TModule>> views, Dictionary<(int Layer, Projection First), TSiblings> into)
    {
        foreach (var (layer, adapted) in Find(modules, compatible).ToList())
        {
            var siblings = store(adapted, [.. adapted.Select(p => modules[(layer, p)])]);
            into.Add(Key(layer, adapted[0]), siblings);
            var stored = views(siblings);
            for (int j = 0; j < adapted.Length; j++) modules[(layer, adapted[j])] = stored[j];
        }
    }

    /// <summary>The stored set of <paramref name="layer"/> for <paramref name="projections"/> (a sibling set), or null when the adapter has none for them.</summary>
    public static TSiblings? Lookup<TSiblings>(Dictionary<(int Layer, Projection First), TSiblings> stored, int layer, IReadOnlyList<Projection> projections,
        Func<TSiblings, IReadOnlyList<Projection>> projectionsOf) where TSiblings : class =>
        stored.TryGetValue(Key(layer, projections[0]), out var s) && projectionsOf(s).All(projections.Contains) ? s : null;

    /// <summary>The key of a layer's sibling set: the set's first projection (whichever of them the adapter adapts).</summary>
    private static (int Layer, Projection First) Key(int layer, Projection projection) =>
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
