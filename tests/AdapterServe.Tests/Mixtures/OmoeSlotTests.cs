using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Kinds.Omoe;
using AdapterServe.Adapters.Store;
using AdapterServe.Bench.Adapters;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterMath;
using AdapterServe.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Mixtures;

/// <summary>
/// Several OMoE adapters in one step share one fixed sequence of batched calls per projection and signature (the OMoE
/// slots), and every row still gets exactly its own adapter's per-token mixture: compared with a naive loop over tokens
/// and experts (explicit softmax, top-K, Gram–Schmidt with the ε guard) that reads the adapter files, and the expert
/// counters with the naive selections; also after a slot has passed to an adapter of another signature, and with the
/// number of native calls per projection independent of the number of adapters.
/// </summary>
public class OmoeSlotTests(ITestOutputHelper output)
{
    static readonly ModelConfig Base = TinyModels.Llama;

    sealed record Omoe(LoadedAdapter Loaded, MixtureServingTests.TokenMixture Naive);

    /// <summary>
    /// OMoE adapters that differ in experts, rank, top_k, rescale and targeted projections, in pairs of one signature
    /// (o0/o1 dense with norm rescale, o2/o3 top-2, o4/o5 top-3 without rescale and n·r wider than k_proj's d_out), and o6,
    /// a signature of its own.
    /// </summary>
    static Omoe[] Adapters(TempDir tmp, string id)
    {
        var specs = new (int Experts, int Rank, int? TopK, string Rescale, Projection[] Targets)[]
        {
            (4, 2, null, "norm", [Projection.Q, Projection.V, Projection.Up]),
            (4, 2, null, "norm", [Projection.Q, Projection.Down]),
            (3, 3, 2, "norm", [Projection.V, Projection.Up, Projection.Down]),
            (3, 3, 2, "norm", [Projection.Q, Projection.V, Projection.Up, Projection.Down]),
            (5, 4, 3, "none", [Projection.Q, Projection.K, Projection.Down]),
            (5, 4, 3, "none", [Projection.K, Projection.V, Projection.Up]),
            (2, 4, null, "none", [Projection.Q, Projection.Up]),
        };
        return specs.Select((s, i) => Load(tmp, $"o{i}-{id}", s.Experts, s.Rank, s.TopK, s.Rescale, s.Targets, seed: 60 + i)).ToArray();
    }

    static Omoe Load(TempDir tmp, string name, int experts, int rank, int? topK, string rescale, Projection[] targets, int seed)
    {
        string dir = tmp.Sub(name);
        MixtureWriters.WriteOmoe(dir, Base, experts, rank, targets, seed, topK, rescale);
        var record = new AdapterRecord($"slot-{name}", 1, dir, AdapterValidator.Validate(dir, Base), "sha256:test", "test", DateTimeOffset.UnixEpoch, DateTimeOffset.UnixEpoch);
        return new Omoe(LoadedAdapter.Load(record, new FuncBaseWeights((_, p) => zeros([Base.ProjectionShape(p).Out, Base.ProjectionShape(p).In])), CPU, ScalarType.Float32),
            MixtureServingTests.NaiveOmoe(dir));
    }

    [Theory]
    [InlineData(false, false)]   // one token per group (decode)
    [InlineData(true, false)]    // up to three tokens per group, with padding rows and a group on rows that are not contiguous
    [InlineData(false, true)]    // the sibling projections handed over together, as the model's fused GEMMs do
    [InlineData(true, true)]
    public void Omoe_adapters_in_one_step_share_the_slot_stacks_and_give_every_row_its_own_mixture_and_counts(bool longer, bool siblings)
    {
        using var tmp = new TempDir();
        var adapters = Adapters(tmp, Guid.NewGuid().ToString("N")[..8]);
        using var slots = new AdapterSlotTable(8);
        foreach (var i in new[] { 3, 0, 5, 2, 6, 1, 4 }) slots.Assign(adapters[i].Loaded);   // slots not in group order
        try
        {
            // o0 | base | o1·0.5 | o2 | o3·1.5 | o4 | o2·0.7 | o5·2 | o6 (alone in its signature: its own path);
            // with `longer`, o0, o2 and o5 get more rows and o0 a second, non-contiguous sequence.
            int more = longer ? 3 : 1;
            AssertStep(adapters, slots,
            [
                (0, longer ? 2 : 1, 1f), (null, 1, 1f), (1, 1, 0.5f), (2, more, 1f), (3, 1, 1.5f), (4, 1, 1f), (2, 1, 0.7f), (5, longer ? 2 : 1, 2f), (6, 1, 1f),
                .. longer ? [((int?)0, 1, 1f)] : Array.Empty<(int?, int, float)>(),
            ], ownPath: 1, siblings: siblings);
        }
        finally
        {
            foreach (var a in adapters) a.Loaded.Dispose();
        }
    }

    [Fact]
    public void A_slot_reused_by_an_omoe_adapter_of_another_signature_serves_the_new_one()
    {
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        var adapters = Adapters(tmp, id).Append(Load(tmp, $"o7-{id}", 5, 4, 3, "none", [Projection.Q, Projection.Down], seed: 67)).ToArray();
        using var slots = new AdapterSlotTable(3);
        try
        {
            slots.Assign(adapters[0].Loaded);
            slots.Assign(adapters[1].Loaded);
            slots.Assign(adapters[2].Loaded);
            AssertStep(adapters, slots, [(0, 1, 1f), (1, 1, 1f), (2, 1, 1f)], salt: 1, ownPath: 1);
            // o0 leaves the device tier; o3 (top-2, o2's signature) takes its slot, then o4 and o5 (top-3, no rescale) o1's and o2's.
            slots.Free(adapters[0].Loaded);
            slots.Assign(adapters[3].Loaded);
            AssertStep(adapters, slots, [(3, 1, 1f), (2, 2, 2f), (1, 1, 1f), (3, 1, 0.5f)], salt: 2, ownPath: 1);   // o3 at two scales: two groups on one slot
            slots.Free(adapters[1].Loaded);
            slots.Free(adapters[2].Loaded);
            slots.Assign(adapters[4].Loaded);
            slots.Assign(adapters[5].Loaded);
            AssertStep(adapters, slots, [(4, 3, 1f), (5, 1, 1f), (3, 2, 1f)], salt: 3, ownPath: 1);
            // o5 leaves; o7, of its signature but without its k_proj (which o4 adapts), takes its slot: its rows get no k_proj delta.
            slots.Free(adapters[5].Loaded);
            slots.Assign(adapters[7].Loaded);
            AssertStep(adapters, slots, [(7, 1, 1f), (4, 1, 1f), (7, 2, 0.5f)], salt: 4);
        }
        finally
        {
            foreach (var a in adapters) a.Loaded.Dispose();
        }
    }

    /// <summary>
    /// An OMoE adapter alone in its step (the per-group path) runs the sibling projections it adapts side by side
    /// (<see cref="OmoeSiblings"/>): o3's q and v (k not adapted), o5's k and v; o4's q and k cannot (n·r is wider than
    /// k_proj's d_out, so their coordinates differ) and run one by one. Every row equals the naive mixture.
    /// </summary>
    [Theory]
    [MemberData(nameof(NativeForm.Each), new[] { 3, 4, 5 }, MemberType = typeof(NativeForm))]
    public void An_omoe_adapter_alone_runs_its_sibling_projections_together_and_equals_the_naive_mixture(int adapter, MixtureForm form)
    {
        using var formOnThisThread = NativeForm.Use(form);
        using var tmp = new TempDir();
        var adapters = Adapters(tmp, Guid.NewGuid().ToString("N")[..8]);
        using var slots = new AdapterSlotTable(8);
        try
        {
            var weights = ((OmoeModules)adapters[adapter].Loaded.Modules).Weights;
            var expected = adapter switch { 3 => new[] { Projection.Q, Projection.V }, 4 => [], _ => [Projection.K, Projection.V] };
            for (int layer = 0; layer < Base.NumHiddenLayers; layer++)
                Assert.Equal(expected, weights.Siblings(layer, ProjectionNames.Siblings[0])?.Projections ?? []);
            var (together, oneByOne) = SlotStepCheck.SiblingCalls(Base, adapters[adapter].Loaded, ProjectionNames.Siblings[0]);
            // The tensor form saves a quarter of its calls; the native form makes few per sibling, and still fewer together.
            long atMost = form == MixtureForm.Tensors ? oneByOne * 3 / 4 : oneByOne;
            if (expected.Length > 0) Assert.True(together < atMost, $"q|k|v together: {together} native calls; one by one: {oneByOne}");
            else Assert.Equal(oneByOne, together);
            AssertStep(adapters, slots, [(adapter, 3, 1f), (null, 1, 1f), (adapter, 1, 0.5f)], salt: 5, ownPath: 2, siblings: true);

            // A copy for another tier is stored side by side again and serves the same rows as the naive mixture.
            using var copy = adapters[adapter].Loaded.To(CPU);
            var copied = ((OmoeModules)copy.Modules).Weights;
            Assert.Equal(expected, copied.Siblings(0, ProjectionNames.Siblings[0])?.Projections ?? []);
            AssertStep([.. adapters.Select((a, i) => i == adapter ? a with { Loaded = copy } : a)], slots, [(adapter, 2, 1f)], salt: 8, ownPath: 1, siblings: true);
        }
        finally
        {
            foreach (var a in adapters) a.Loaded.Dispose();
        }
    }

    /// <summary>
    /// Steps leave no live tensors behind: the slot path (eight groups of three signatures and one alone) and the
    /// per-group path of adapters alone in their signature (o3's q|v and o5's k|v side by side when the siblings are
    /// handed over together).
    /// </summary>
    [Theory]
    [InlineData(false, MixtureForm.Tensors)]
    [InlineData(true, MixtureForm.Tensors)]
    [InlineData(false, MixtureForm.Native)]
    [InlineData(true, MixtureForm.Native)]
    public void Steps_leave_no_live_tensors_behind(bool siblings, MixtureForm form)
    {
        using var formOnThisThread = NativeForm.Use(form);
        using var tmp = new TempDir();
        var adapters = Adapters(tmp, Guid.NewGuid().ToString("N")[..8]);
        using var slots = new AdapterSlotTable(8);
        foreach (var a in adapters) slots.Assign(a.Loaded);
        try
        {
            (int, int, float)[] slotted = [(0, 2, 1f), (1, 1, 0.5f), (2, 3, 1f), (3, 1, 1f), (4, 1, 2f), (5, 2, 1f), (6, 1, 1f), (2, 1, 0.7f)];
            (int, int, float)[] alone = [(3, 2, 1f), (5, 1, 0.5f)];
            SlotStepCheck.LeavesNoLiveTensors(Base, [.. adapters.Select(a => a.Loaded)], [slotted, alone], ProjectionNames.All, siblings);
        }
        finally
        {
            foreach (var a in adapters) a.Loaded.Dispose();
        }
    }

    /// <summary>
    /// The slot path's native calls per projection (tensors created, every TorchSharp op makes one) are the same for 2 and
    /// for 8 distinct OMoE adapters of one signature, dense or top-K, in both forms; in the tensor form fewer than two
    /// groups cost on the per-group path (why <see cref="OmoeSlotStep.MinGroups"/> is 2), in the native form fewer than three.
    /// </summary>
    [Theory]
    [InlineData(null, MixtureForm.Tensors)]
    [InlineData(2, MixtureForm.Tensors)]
    [InlineData(null, MixtureForm.Native)]
    [InlineData(2, MixtureForm.Native)]
    public void The_slot_path_runs_the_same_calls_per_projection_for_two_and_eight_adapters(int? topK, MixtureForm form)
    {
        using var formOnThisThread = NativeForm.Use(form);
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        var adapters = Enumerable.Range(0, 8).Select(i => Load(tmp, $"c{i}-{id}", 4, 2, topK, "norm", [Projection.Q, Projection.Up], seed: 80 + i)).ToArray();
        using var slots = new AdapterSlotTable(8);
        foreach (var a in adapters) slots.Assign(a.Loaded);
        try
        {
            long Calls(int groups)
            {
                var segments = Enumerable.Range(0, groups).Select(i => AdapterSegment.Single(i, 1, adapters[i].Loaded, i % 2 == 0 ? 1f : 0.5f)).ToList();
                var (dIn, dOut) = Base.ProjectionShape(Projection.Up);
                var x = randn([groups, dIn], generator: new Generator(7));                     // [N, d_in]
                var w = zeros([dOut, dIn]);
                var served = OmoeSlotBank.Of(slots).GroupsServed;
                using var batch = new AdapterBatch(segments);
                Assert.Equal(groups < OmoeSlotStep.MinGroups ? 0 : groups, OmoeSlotBank.Of(slots).GroupsServed - served);
                batch.Apply(0, Projection.Up, x, zeros([groups, dOut]), w);                      // the first use of a layout: warm
                var stats = DisposeScopeManager.Statistics;
                long before = stats.CreatedInScopeCount + stats.CreatedOutsideScopeCount;
                batch.Apply(1, Projection.Up, x, zeros([groups, dOut]), w);
                long calls = stats.CreatedInScopeCount + stats.CreatedOutsideScopeCount - before - 1;   // less the zeros
                batch.Complete();
                return calls;
            }
            long single = Calls(1), two = Calls(2), eight = Calls(8);
            Assert.True(two == eight, $"slot path: {two} tensors per projection for 2 adapters, {eight} for 8");
            output.WriteLine($"{form}: slot path {two} tensors per projection for 2 and for 8 groups; one group on its own path {single}");
            // The tensor form's slot path costs fewer calls than two groups on their own path (why MinGroups is 2); the
            // native form's own path is about ten calls a group, so its slot path is ahead in calls from three groups on.
            int groupsBeaten = form == MixtureForm.Tensors ? 2 : 3;
            Assert.True(two < groupsBeaten * single, $"slot path for 2 groups: {two} tensors; one group on its own path: {single}");
        }
        finally
        {
            foreach (var a in adapters) a.Loaded.Dispose();
        }
    }

    /// <summary>
    /// One step over <paramref name="plan"/> (per segment: adapter index or null for the base, tokens, scale): every row
    /// against the naive mixture of its adapter, and the expert counters against the naive selections.
    /// <paramref name="ownPath"/> groups are expected on the per-group path (a signature alone in the step).
    /// </summary>
    static void AssertStep(Omoe[] adapters, AdapterSlotTable slots, (int? Adapter, int Tokens, float Scale)[] plan, int salt = 0, int ownPath = 0, bool siblings = false)
    {
        var bank = OmoeSlotBank.Of(slots);
        int groups = plan.Where(p => p.Adapter is not null).Select(p => (p.Adapter, p.Scale)).Distinct().Count();
        SlotStepCheck.Run(Base, [.. adapters.Select(a => a.Loaded)], (a, layer, p, x) => adapters[a].Naive(ProjectionNames.ModulePath(layer, p), x),
            plan, () => bank.GroupsServed, groups - ownPath, ProjectionNames.All, salt, siblings: siblings);   // every group of a shared signature from the stacks
    }
}
