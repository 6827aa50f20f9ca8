using AdapterServe.Adapters;
using AdapterServe.Adapters.Experts;
using AdapterServe.Modeling;
using TorchSharp;
using static AdapterServe.Tests.Mixtures.MixtureNaive;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Mixtures;

/// <summary>
/// One step of a mixture kind over a plan of segments (adapter index or null for the base, tokens, scale), checked
/// against an independent per-token computation: every row of every projection equals its adapter's naive delta times
/// the segment's scale (base rows: zero), the kind's slot path served the expected groups, and the expert counters
/// moved by exactly the naive selections, for exactly the modules the naive computation adapts. With
/// <c>siblings</c>, the sibling projections (q|k|v, gate|up) go through the hook together
/// (<see cref="AdapterBatch.ApplySiblings"/>, one input), as the model's fused GEMMs hand them over.
/// </summary>
internal static class SlotStepCheck
{
    /// <summary>
    /// Native calls (tensors created: every TorchSharp op makes one) for one layer's <paramref name="set"/> of sibling
    /// projections of <paramref name="adapter"/> alone in a step of <paramref name="rows"/> tokens: handed over together
    /// (<see cref="AdapterBatch.ApplySiblings"/>) and one by one (<see cref="AdapterBatch.Apply"/>).
    /// </summary>
    public static (long Together, long OneByOne) SiblingCalls(ModelConfig model, LoadedAdapter adapter, Projection[] set, int rows = 2)
    {
        using var batch = new AdapterBatch([AdapterSegment.Single(0, rows, adapter)]);
        var (dIn, _) = model.ProjectionShape(set[0]);
        var x = randn([rows, dIn], generator: new Generator(3));                                    // [rows, d_in]
        var ys = set.Select(p => zeros([rows, model.ProjectionShape(p).Out])).ToArray();
        var ws = set.Select(p => zeros([model.ProjectionShape(p).Out, dIn])).ToArray();
        long Created() => DisposeScopeManager.Statistics.CreatedInScopeCount + DisposeScopeManager.Statistics.CreatedOutsideScopeCount;
        batch.ApplySiblings(0, set, x, ys, ws);                                                     // warm: the step's first use lays out its rows
        long start = Created();
        batch.ApplySiblings(0, set, x, ys, ws);
        long together = Created() - start;
        start = Created();
        for (int i = 0; i < set.Length; i++) batch.Apply(0, set[i], x, ys[i], ws[i]);
        long oneByOne = Created() - start;
        batch.Complete();
        return (together, oneByOne);
    }

    /// <summary>
    /// Hands every layer's <paramref name="projections"/> to <paramref name="batch"/> over <paramref name="rows"/> tokens
    /// of random input (seeded by <paramref name="salt"/>, the layer and the projection) and zero base outputs, so each
    /// output is the adapters' delta: with <paramref name="siblings"/>, each sibling set (q|k|v, gate|up) together
    /// (<see cref="AdapterBatch.ApplySiblings"/>, one input), as the model's fused GEMMs hand them over; else one by one.
    /// </summary>
    /// <param name="check">Gets each (layer, projection, input, output), when given.</param>
    static void Feed(ModelConfig model, AdapterBatch batch, int rows, IReadOnlyList<Projection> projections, bool siblings, int salt,
        Action<int, Projection, Tensor, Tensor>? check = null)
    {
        var units = siblings
            ? ProjectionNames.Siblings.Select(set => set.Where(projections.Contains).ToArray()).Where(u => u.Length > 0)
                .Concat(projections.Where(p => !ProjectionNames.Siblings.Any(set => set.Contains(p))).Select(p => new[] { p })).ToList()
            : [.. projections.Select(p => new[] { p })];
        for (int layer = 0; layer < model.NumHiddenLayers; layer++)
            foreach (var unit in units)
            {
                var (dIn, _) = model.ProjectionShape(unit[0]);
                var x = randn([rows, dIn], generator: new Generator((ulong)(salt * 1000 + layer * 10 + (int)unit[0] + 1)));  // [rows, d_in]
                var ys = unit.Select(p => zeros([rows, model.ProjectionShape(p).Out])).ToArray();    // base output 0: y is the delta
                if (unit.Length == 1) ys[0] = batch.Apply(layer, unit[0], x, ys[0], zeros([model.ProjectionShape(unit[0]).Out, dIn]));
                else batch.ApplySiblings(layer, unit, x, ys, [.. unit.Select(p => zeros([model.ProjectionShape(p).Out, dIn]))]);
                if (check is not null)
                    foreach (var (p, y) in unit.Zip(ys)) check(layer, p, x, y);
            }
    }

    /// <summary>
    /// Steps over each of <paramref name="plans"/> in turn (per segment: adapter index, tokens, scale) leave no live
    /// tensors behind: one warm-up round (the slot paths place the adapters), then five more must end where it ended.
    /// </summary>
    public static void LeavesNoLiveTensors(ModelConfig model, IReadOnlyList<LoadedAdapter> adapters, IReadOnlyList<(int Adapter, int Tokens, float Scale)[]> plans,
        IReadOnlyList<Projection> projections, bool siblings)
    {
        using var outer = NewDisposeScope();
        void Step((int Adapter, int Tokens, float Scale)[] plan)
        {
            using var step = NewDisposeScope();
            int start = 0;
            using var batch = new AdapterBatch([.. plan.Select(p => AdapterSegment.Single((start += p.Tokens) - p.Tokens, p.Tokens, adapters[p.Adapter], p.Scale))]);
            Feed(model, batch, start, projections, siblings, salt: 0);
            batch.Complete();                                                                 // the tally takes the masks and frees them after its flush
        }
        void Round()
        {
            foreach (var plan in plans) Step(plan);
        }

        Round();
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 5; i++) Round();
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    /// <summary>An adapter's naive result for one token at (layer, projection): its delta (null: not adapted there) and the selected experts' indices in the site's label order.</summary>
    public delegate (double[]? Delta, IEnumerable<int> Selected) NaiveToken(int adapter, int layer, Projection projection, double[] x);

    /// <param name="servedFromSlots">The kind's slot bank's running count of groups served (read before and after the step).</param>
    /// <param name="slotGroups">Groups the slot path must serve in this step.</param>
    /// <param name="relative">Tolerance 1e-5·(1 + |naive|) instead of 1e-5.</param>
    /// <param name="siblings">Hand sibling projections to the hook together.</param>
    public static void Run(ModelConfig model, IReadOnlyList<LoadedAdapter> adapters, NaiveToken naive, (int? Adapter, int Tokens, float Scale)[] plan,
        Func<long> servedFromSlots, int slotGroups, IReadOnlyList<Projection> projections, int salt = 0, bool relative = false, bool siblings = false)
    {
        var rowAdapter = new List<(int Adapter, float Scale)?>();
        var segments = new List<AdapterSegment>();
        foreach (var (adapter, tokens, scale) in plan)
        {
            segments.Add(adapter is { } a ? AdapterSegment.Single(rowAdapter.Count, tokens, adapters[a], scale) : AdapterSegment.Base(rowAdapter.Count, tokens));
            for (int t = 0; t < tokens; t++) rowAdapter.Add(adapter is { } aa ? (aa, scale) : null);
        }
        int rows = rowAdapter.Count;

        long servedBefore = servedFromSlots();
        var before = adapters.Select(a => ExpertUsage.Shared.Snapshot(a.Name)).ToArray();
        var naiveCounts = new Dictionary<(int Adapter, int Layer, string Module, int Expert), long>();
        var adapted = new HashSet<(int Adapter, int Layer, string Module)>();
        using (var batch = new AdapterBatch(segments))
        {
            Assert.Equal(slotGroups, servedFromSlots() - servedBefore);
            Feed(model, batch, rows, projections, siblings, salt, Check);
            batch.Complete();
        }

        void Check(int layer, Projection p, Tensor x, Tensor y)
        {
            int dOut = (int)y.size(1);
            var xs = Host2(x);
            var got = Host2(y);
            for (int r = 0; r < rows; r++)
            {
                var expected = new double[dOut];
                if (rowAdapter[r] is var (a, scale) && naive(a, layer, p, Row(xs, r)) is ({ } delta, var selected))
                {
                    for (int o = 0; o < dOut; o++) expected[o] = scale * delta[o];
                    adapted.Add((a, layer, p.ShortName()));
                    foreach (int e in selected) naiveCounts[(a, layer, p.ShortName(), e)] = naiveCounts.GetValueOrDefault((a, layer, p.ShortName(), e)) + 1;
                }
                for (int o = 0; o < dOut; o++)
                    Assert.True(Math.Abs(expected[o] - got[r, o]) <= 1e-5 * (1 + (relative ? Math.Abs(expected[o]) : 0)),
                        $"layer {layer} {p} row {r} [{o}]: naive {expected[o]}, served {got[r, o]}");
            }
        }

        foreach (int a in plan.Where(p => p.Adapter is not null).Select(p => p.Adapter!.Value).Distinct())
        {
            var after = ExpertUsage.Shared.Snapshot(adapters[a].Name)!;
            Assert.Equal(adapted.Where(m => m.Adapter == a).Select(m => (m.Layer, m.Module)).Order(), after.Modules.Select(m => (m.Layer, m.Module)).Order());
            foreach (var module in after.Modules)
            {
                var old = before[a]?.Modules.SingleOrDefault(o => o.Layer == module.Layer && o.Module == module.Module);
                for (int e = 0; e < module.Experts.Count; e++)
                {
                    long counted = module.Experts[e].Selections - (old?.Experts[e].Selections ?? 0);
                    long expected = naiveCounts.GetValueOrDefault((a, module.Layer, module.Module, e));
                    Assert.True(expected == counted, $"{adapters[a].Name} {module.Module} of layer {module.Layer} expert {module.Experts[e].Expert}: naive {expected}, counted {counted}");
                }
            }
        }
    }
}
