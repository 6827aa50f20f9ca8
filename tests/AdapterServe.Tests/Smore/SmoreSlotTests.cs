using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Kinds.Smore;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterMath;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Mixtures;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Smore;

/// <summary>
/// Several S'MoRE adapters in one step share one fixed sequence of batched calls per projection and structure (the
/// S'MoRE slots), and every row still gets exactly its own adapter's tree: compared with the naive per-token recursive
/// tree in double precision (<see cref="NaiveSmore"/>) that reads the adapters' own tensors, and the expert counters
/// with the naive selections; also after a slot has passed to another adapter, and with a call count that does not grow
/// with the number of adapters.
/// </summary>
public class SmoreSlotTests(ITestOutputHelper output)
{
    static readonly ModelConfig Base = TinyModels.Llama;
    static readonly Projection[] Mlp = [Projection.Gate, Projection.Up, Projection.Down];

    /// <summary>Two sub-layers, switch gate, tanh: the structure most adapters here share (lora_alpha differs: it is folded, not structural).</summary>
    static readonly SmoreShape Switch = new([4, 3], [2, 2], [3, 2], [5, 4], DownDim: 6, GateType: "switch", ExpertAct: "tanh");
    /// <summary>Three sub-layers (fan-out 1 in the middle), cosine gate, PReLU experts and routers with their own slopes per adapter, "child_v2".</summary>
    static readonly SmoreShape Cosine = new([3, 4, 2], [2, 1, 2], [2, 2, 3], [4, 5, 3], DownDim: 0, GateType: "noisy_topk", ExpertAct: "prelu|0.25",
        GateAct: "prelu|0.1", Position: "child_v2", Alpha: [4, 2, 6]);
    /// <summary>One sub-layer, dense gate: a structure only one adapter has (it stays on its own path).</summary>
    static readonly SmoreShape Dense = new([3], [1], [4], [5], DownDim: 5, GateType: "dense", ExpertAct: "relu", Position: "child");

    sealed record Tree(LoadedAdapter Loaded, SmoreTestAdapter Files);

    /// <summary>
    /// t0..t2: the switch structure on overlapping projections (gate+up, up+down, all three); t3, t4: the cosine
    /// structure (up+down, gate+down); t5: the dense one (up).
    /// </summary>
    static Tree[] Trees(TempDir tmp, string id)
    {
        var specs = new (SmoreShape Shape, Projection[] Targets, double[]? Alpha)[]
        {
            (Switch, [Projection.Gate, Projection.Up], [4, 6]),
            (Switch, [Projection.Up, Projection.Down], null),
            (Switch, Mlp, [2, 1]),
            (Cosine, [Projection.Up, Projection.Down], [4, 2, 6]),
            (Cosine, [Projection.Gate, Projection.Down], [3, 3, 3]),
            (Dense, [Projection.Up], null),
        };
        return specs.Select((s, i) => Load(tmp, $"smore-slot-t{i}-{id}", s.Shape with { Alpha = s.Alpha }, s.Targets, seed: 70 + i)).ToArray();
    }

    static Tree Load(TempDir tmp, string name, SmoreShape shape, Projection[] targets, int seed)
    {
        var files = new SmoreTestAdapter(shape, Base, [.. Enumerable.Range(0, Base.NumHiddenLayers).SelectMany(l => targets.Select(p => (l, p)))], seed);
        // Slopes of their own per adapter, module and sub-layer (the writer's are the same for every adapter): a slot
        // that read another slot's slope would show.
        var random = new Random(seed);
        foreach (var key in files.Tensors.Keys.Where(k => k.Contains("act_param", StringComparison.Ordinal) || k.EndsWith("mlp.1.weight", StringComparison.Ordinal)).Order().ToList())
            files.Tensors[key] = tensor(new[] { 0.05f + 0.9f * (float)random.NextDouble() }).DetachFromDisposeScope();
        string dir = files.Write(tmp.Sub(name));
        var record = new AdapterRecord(name, 1, dir, AdapterValidator.Validate(dir, Base), "sha256:test", "test", DateTimeOffset.UnixEpoch, DateTimeOffset.UnixEpoch);
        return new Tree(LoadedAdapter.Load(record, NoBase, CPU, ScalarType.Float32), files);
    }

    /// <summary>S'MoRE never reads the base weights.</summary>
    static readonly FuncBaseWeights NoBase = new((_, p) => zeros([Base.ProjectionShape(p).Out, Base.ProjectionShape(p).In]));

    [Theory]
    [InlineData(false, false, MixtureForm.Tensors)]   // one token per group (decode)
    [InlineData(true, false, MixtureForm.Tensors)]    // up to three tokens per group: padding rows, and a group on rows that are not contiguous
    [InlineData(false, true, MixtureForm.Tensors)]    // gate and up handed over together, as the model's fused GEMM does
    [InlineData(true, true, MixtureForm.Tensors)]
    [InlineData(false, false, MixtureForm.Native)]    // the same with the native tree
    [InlineData(true, false, MixtureForm.Native)]
    [InlineData(false, true, MixtureForm.Native)]
    [InlineData(true, true, MixtureForm.Native)]
    public void Smore_adapters_in_one_step_share_the_slot_stacks_and_give_every_row_its_own_tree_and_counts(bool longer, bool siblings, MixtureForm form)
    {
        using var formOnThisThread = NativeForm.Use(form);
        using var tmp = new TempDir();
        var trees = Trees(tmp, Guid.NewGuid().ToString("N")[..8]);
        using var slots = new AdapterSlotTable(8);
        foreach (var i in new[] { 3, 0, 5, 2, 4, 1 }) slots.Assign(trees[i].Loaded);       // slots not in group order
        try
        {
            // t0 | base | t1·0.5 | t2 | t3·1.5 | t4 | t3·−0.7 | t5 ; with `longer`, more rows for some and a second, later sequence of t0.
            (int?, int, float)[] plan =
            [
                (0, longer ? 2 : 1, 1f), (null, 1, 1f), (1, longer ? 3 : 1, 0.5f), (2, 1, 1f), (3, 1, 1.5f), (4, longer ? 2 : 1, 1f), (3, 1, -0.7f), (5, 1, 1f),
                .. longer ? [((int?)0, 1, 1f)] : Array.Empty<(int?, int, float)>(),
            ];
            AssertStep(trees, slots, plan, onOwnPath: [5], siblings: siblings);              // the dense tree's structure has no partner
        }
        finally
        {
            foreach (var t in trees) t.Loaded.Dispose();
        }
    }

    /// <summary>
    /// An S'MoRE adapter alone in its step (the per-group path) runs gate and up, one structure on one input, as two
    /// trees of one fused pass (<see cref="SmoreSiblings"/>): t0 (switch, gate+up), t2 (switch, all three) and a cosine
    /// tree with PReLU slopes of its own per module on all three. Every row equals the naive tree, every count the naive selections.
    /// </summary>
    [Theory]
    [MemberData(nameof(NativeForm.Each), new[] { 0, 2, 6 }, MemberType = typeof(NativeForm))]
    public void An_smore_adapter_alone_runs_gate_and_up_as_two_trees_of_one_pass_and_equals_the_naive_tree(int tree, MixtureForm form)
    {
        using var formOnThisThread = NativeForm.Use(form);
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        var trees = Trees(tmp, id).Append(Load(tmp, $"smore-slot-t6-{id}", Cosine, Mlp, seed: 76)).ToArray();
        using var slots = new AdapterSlotTable(8);
        try
        {
            var weights = (SmoreWeights)trees[tree].Loaded.Modules;
            for (int layer = 0; layer < Base.NumHiddenLayers; layer++)
                Assert.Equal([Projection.Gate, Projection.Up], weights.Siblings(layer, ProjectionNames.Siblings[1])?.Projections ?? []);
            var (together, oneByOne) = SlotStepCheck.SiblingCalls(Base, trees[tree].Loaded, ProjectionNames.Siblings[1]);
            output.WriteLine($"gate|up: {together} native calls together, {oneByOne} one by one");
            Assert.True(together < oneByOne * 3 / 4, $"gate|up together: {together} native calls; one by one: {oneByOne}");
            AssertStep(trees, slots, [(tree, 3, 1f), (null, 1, 1f), (tree, 1, -0.5f)], salt: 6, onOwnPath: [tree], siblings: true);

            // A copy for another tier is stacked again and serves the same rows as the naive tree.
            using var copy = trees[tree].Loaded.To(CPU);
            Assert.Equal([Projection.Gate, Projection.Up], ((SmoreWeights)copy.Modules).Siblings(0, ProjectionNames.Siblings[1])?.Projections ?? []);
            AssertStep([.. trees.Select((t, i) => i == tree ? t with { Loaded = copy } : t)], slots, [(tree, 2, 1f)], salt: 7, onOwnPath: [tree], siblings: true);
        }
        finally
        {
            foreach (var t in trees) t.Loaded.Dispose();
        }
    }

    /// <summary>Steps leave no live tensors behind, on the slot path and with gate|up of an adapter alone run as two trees of one pass, in both forms.</summary>
    [Theory]
    [MemberData(nameof(NativeForm.Both), MemberType = typeof(NativeForm))]
    public void Steps_with_gate_and_up_together_leave_no_live_tensors_behind(MixtureForm form)
    {
        using var formOnThisThread = NativeForm.Use(form);
        using var tmp = new TempDir();
        var trees = Trees(tmp, Guid.NewGuid().ToString("N")[..8]);
        using var slots = new AdapterSlotTable(8);
        foreach (var t in trees.Take(3)) slots.Assign(t.Loaded);
        try
        {
            (int, int, float)[] slotted = [(0, 1, 1f), (1, 2, 1f), (2, 1, 0.5f)], alone = [(2, 3, 1f)];
            SlotStepCheck.LeavesNoLiveTensors(Base, [.. trees.Select(t => t.Loaded)], [slotted, alone], Mlp, siblings: true);
        }
        finally
        {
            foreach (var t in trees) t.Loaded.Dispose();
        }
    }

    [Fact]
    public void A_slot_reused_by_another_smore_adapter_serves_the_new_one()
    {
        using var tmp = new TempDir();
        var trees = Trees(tmp, Guid.NewGuid().ToString("N")[..8]);
        using var slots = new AdapterSlotTable(2);
        try
        {
            slots.Assign(trees[0].Loaded);
            slots.Assign(trees[1].Loaded);
            AssertStep(trees, slots, [(0, 1, 1f), (1, 2, 1f)], salt: 1);
            // t0 leaves the device tier; t3 (another structure, other projections) takes its slot; two scales of t3 and of t1.
            slots.Free(trees[0].Loaded);
            slots.Assign(trees[3].Loaded);
            AssertStep(trees, slots, [(3, 1, 1f), (1, 1, 2f), (3, 2, 0.5f), (1, 1, -1f)], salt: 2);
            // t2 (the first structure again, all three projections) takes t1's slot: the stacks hold it, not t1.
            slots.Free(trees[1].Loaded);
            slots.Assign(trees[2].Loaded);
            AssertStep(trees, slots, [(2, 3, 1f), (3, 1, 1f), (2, 1, 0.25f), (3, 1, 2f)], salt: 3);
        }
        finally
        {
            foreach (var t in trees) t.Loaded.Dispose();
        }
    }

    [Theory]
    [MemberData(nameof(NativeForm.Both), MemberType = typeof(NativeForm))]
    public void Calls_per_projection_do_not_grow_from_two_to_eight_adapters_of_one_structure(MixtureForm form)
    {
        using var formOnThisThread = NativeForm.Use(form);
        // Every TorchSharp op that returns a tensor is counted in the thread's dispose-scope statistics (see also
        // FusedCallCountTests): the tensors one projection of the step creates are its native calls. Against the
        // per-group path (the same adapters without slots), which grows with them.
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        var trees = Enumerable.Range(0, 8).Select(i => Load(tmp, $"smore-count-{i}-{id}", Switch with { Alpha = [1.0 + i, 2] }, [Projection.Up], seed: 90 + i)).ToArray();
        var own = trees.Select(t => LoadedAdapter.Load(t.Loaded.Record with { Name = t.Loaded.Name + "-own" }, NoBase, CPU, ScalarType.Float32)).ToArray(); // no slot
        using var slots = new AdapterSlotTable(8);
        foreach (var t in trees) slots.Assign(t.Loaded);
        try
        {
            int Calls(int adapters, bool slotted)
            {
                var segments = Enumerable.Range(0, adapters).Select(i => AdapterSegment.Single(i, 1, slotted ? trees[i].Loaded : own[i], 1f)).ToList();
                var bank = SmoreSlotBank.Of(slots);
                long served = bank.GroupsServed;
                using var batch = new AdapterBatch(segments);
                Assert.Equal(slotted ? adapters : 0, bank.GroupsServed - served);
                var (dIn, dOut) = Base.ProjectionShape(Projection.Up);
                var x = randn([adapters, dIn], generator: new Generator(5));                   // [rows, d_in]
                var y0 = zeros([adapters, dOut]);                                               // [rows, d_out]
                var w0 = zeros([dOut, dIn]);                                                    // [d_out, d_in]
                batch.Apply(0, Projection.Up, x, y0, w0);                                       // the step's first projection also lays out its rows
                var counts = new List<long>();
                for (int layer = 0; layer < Base.NumHiddenLayers; layer++)
                {
                    var stats = DisposeScopeManager.Statistics;
                    long before = stats.CreatedInScopeCount + stats.CreatedOutsideScopeCount;
                    batch.Apply(layer, Projection.Up, x, y0, w0);
                    counts.Add(stats.CreatedInScopeCount + stats.CreatedOutsideScopeCount - before);
                }
                batch.Complete();
                Assert.Single(counts.Distinct());                                                // every layer alike
                return (int)counts[0];
            }

            int two = Calls(2, slotted: true), eight = Calls(8, slotted: true);
            Assert.True(two == eight, $"slot path: {two} tensors per projection for 2 adapters, {eight} for 8");
            int ownTwo = Calls(2, slotted: false), ownEight = Calls(8, slotted: false);
            output.WriteLine($"tensors per projection: slot path {two} (2 adapters), {eight} (8); per-group path {ownTwo} (2), {ownEight} (8)");
            // The tensor form's slot path makes fewer calls for 8 adapters than its per-group path for 2; the native form's
            // per-group tree is one call, so its slot path (which also picks the trees from the stacks) wins from more adapters on.
            int beaten = form == MixtureForm.Tensors ? ownTwo : ownEight;
            Assert.True(ownEight > ownTwo && eight < beaten, $"per-group path: {ownTwo} for 2, {ownEight} for 8; slot path {eight}");
        }
        finally
        {
            foreach (var t in trees) t.Loaded.Dispose();
            foreach (var o in own) o.Dispose();
        }
    }

    /// <summary>
    /// One step over <paramref name="plan"/> (per segment: tree index or null for the base, tokens, scale): every row
    /// against the naive tree of its adapter, the expert counters against the naive selections, and every group from
    /// the stacks except those of <paramref name="onOwnPath"/>.
    /// </summary>
    static void AssertStep(Tree[] trees, AdapterSlotTable slots, (int? Tree, int Tokens, float Scale)[] plan, int salt = 0, int[]? onOwnPath = null, bool siblings = false)
    {
        var bank = SmoreSlotBank.Of(slots);
        int groups = plan.Where(p => p.Tree is { } t && !(onOwnPath ?? []).Contains(t)).Select(p => (p.Tree, p.Scale)).Distinct().Count();
        SlotStepCheck.Run(Base, [.. trees.Select(t => t.Loaded)], Naive, plan, () => bank.GroupsServed, groups, Mlp, salt, relative: true, siblings: siblings);

        // The tree's delta, and each (token, path) selection of each sub-layer as its label's index (leaf level first).
        (double[]? Delta, IEnumerable<int> Selected) Naive(int t, int layer, Projection p, double[] x)
        {
            if (!trees[t].Files.Tensors.ContainsKey($"{SmoreTestAdapter.Prefix(layer, p)}.moe_W_final")) return (null, []);
            var shape = trees[t].Files.Shape;
            var (delta, selected) = new NaiveSmore(shape, trees[t].Files.Module(layer, p)).Token(x);
            return (delta, Enumerable.Range(0, shape.Levels).SelectMany(l => selected[l].Select(e => shape.Experts.Take(l).Sum() + e)));
        }
    }
}
