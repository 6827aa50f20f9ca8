using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using Reference = AdapterServe.Tests.AdapterMath.Reference;
using AdapterServe.Tests.AdapterStore;
using static AdapterServe.Tests.Kronecker.KroneckerTestFiles;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Kronecker;

/// <summary>
/// The served (never materialised) LoKr and MoKA deltas equal <c>x @ (W0 + ΔW)ᵀ</c> with ΔW built here with
/// <c>torch.kron</c> from the stored factors (float32, 1e-5), for every factor layout, rectangular layers, patterns and
/// MoKA components of different shapes.
/// </summary>
public sealed class KroneckerMathTests : IDisposable
{
    private static readonly ModelConfig Base = TestAdapter.TinyBase; // q/o [8, 8], k/v [4, 8], gate/up [12, 8], down [8, 12]
    private readonly TempFolder _temp = new();
    private int _count;

    public void Dispose() => _temp.Dispose();

    private (KroneckerDescription Description, Dictionary<(int, Projection), KroneckerWeights> Modules) Load(TestAdapter adapter) =>
        KroneckerTestFiles.Load(adapter.WriteTo(_temp.Sub($"k{_count++}")), Base);

    /// <summary>PEFT's get_delta_weight: <c>s · kron(w1, w2)</c>, each factor whole or <c>_a @ _b</c>.</summary>
    private static Tensor LokrDelta(TestAdapter adapter, int layer, Projection p, double s)
    {
        string prefix = Prefix(layer, p);
        Tensor Factor(string name) => Has(adapter, $"{prefix}.{name}") ? Stored(adapter, $"{prefix}.{name}")
            : Stored(adapter, $"{prefix}.{name}_a").matmul(Stored(adapter, $"{prefix}.{name}_b"));
        return kron(Factor("lokr_w1"), Factor("lokr_w2")) * s;
    }

    /// <summary>methods.md §3: <c>scaling · Σ_i softmax(g)_i · kron(A_i, B_i)</c>.</summary>
    private static Tensor MokaDelta(TestAdapter adapter, int layer, Projection p, int count, double scaling)
    {
        string prefix = Prefix(layer, p);
        var alpha = Stored(adapter, $"{prefix}.moka_gate").softmax(0);
        var (dIn, dOut) = Base.ProjectionShape(p);
        var delta = zeros(dOut, dIn);
        for (int i = 0; i < count; i++)
            delta += kron(Stored(adapter, $"{prefix}.moka_A.{i}"), Stored(adapter, $"{prefix}.moka_B.{i}")) * alpha[i];
        return delta * scaling;
    }

    /// <summary>The served output <c>x W0ᵀ + x ΔWᵀ</c>, through both entry points (a delta, and in place into rows).</summary>
    private static void AssertServes(KroneckerWeights weights, Tensor deltaW, string what)
    {
        var w0 = randn(deltaW.shape[0], deltaW.shape[1]);                                      // [d_out, d_in]
        var x = randn(5, deltaW.shape[1]);                                                     // [5, d_in]
        var expected = Reference.Linear(x, w0 + deltaW);                                       // x @ (W0 + ΔW)ᵀ
        Reference.AssertClose(expected, Reference.Linear(x, w0) + weights.Delta(x), what: what + " (Delta)");
        var y = Reference.Linear(x, w0);
        weights.AddTo(x, y);
        Reference.AssertClose(expected, y, what: what + " (AddTo)");
    }

    [Theory]
    [InlineData(FactorForm.Whole, FactorForm.Whole)]
    [InlineData(FactorForm.Whole, FactorForm.LowRank)]
    [InlineData(FactorForm.LowRank, FactorForm.Whole)]
    [InlineData(FactorForm.LowRank, FactorForm.LowRank)]
    public void Lokr_output_equals_the_kron_materialised_weight_for_every_factor_layout(FactorForm w1, FactorForm w2)
    {
        using var scope = NewDisposeScope();
        var adapter = KroneckerTestFiles.Lokr(Base, ProjectionNames.All, r: 2, alpha: 3, w1: w1, w2: w2);
        var (description, modules) = Load(adapter);

        Assert.Equal(AdapterKind.Lokr, description.Kind);
        Assert.Equal(2 * 7, modules.Count);
        foreach (var ((layer, p), weights) in modules)
        {
            using (weights)
                AssertServes(weights, LokrDelta(adapter, layer, p, 3.0 / 2), $"{w1}/{w2} layer {layer} {p.ShortName()}");
        }
        var spec = description.Modules.First(m => m.Projection == Projection.Gate);
        Assert.Equal(new KroneckerShape(3, 2, 4, 4), spec.Components.Single());                 // 12 = 3·4, 8 = 2·4
        Assert.Equal(w1 == FactorForm.LowRank ? 2 : null, spec.W1Rank);
        Assert.Equal(w2 == FactorForm.LowRank ? 2 : null, spec.W2Rank);
    }

    [Fact]
    public void Lokr_rank_and_alpha_patterns_give_each_module_its_own_alpha_over_r()
    {
        using var scope = NewDisposeScope();
        // r = 2, alpha = 4, rank_pattern {"q_proj": 4}, alpha_pattern {"layers.1.mlp.down_proj": 12}: low-rank w2 shows the rank.
        var adapter = KroneckerTestFiles.Lokr(Base, [Projection.Q, Projection.Down], r: 2, alpha: 4, w2: FactorForm.LowRank,
            rankOf: (_, p) => p == Projection.Q ? 4 : 2);
        adapter.Config["rank_pattern"] = new JsonObject { ["q_proj"] = 4 };
        adapter.Config["alpha_pattern"] = new JsonObject { [@"layers\.1\.mlp\.down_proj"] = 12 };
        var (description, modules) = Load(adapter);

        var expectedScaling = new Dictionary<(int, Projection), double>
        {
            [(0, Projection.Q)] = 4.0 / 4, [(1, Projection.Q)] = 4.0 / 4, [(0, Projection.Down)] = 4.0 / 2, [(1, Projection.Down)] = 12.0 / 2,
        };
        foreach (var ((layer, p), weights) in modules)
        {
            using (weights)
                AssertServes(weights, LokrDelta(adapter, layer, p, expectedScaling[(layer, p)]), $"layer {layer} {p.ShortName()}");
            Assert.Equal(expectedScaling[(layer, p)], description.Modules.Single(m => m.Layer == layer && m.Projection == p).Scaling, 12);
        }
    }

    [Fact]
    public void Lokr_with_any_factor_split_of_the_layer_is_served_exactly()
    {
        using var scope = NewDisposeScope();
        // decompose_factor 4 (PEFT: 8 → (4, 2), 12 → (4, 3)), and a split PEFT would not choose ([1, 8] ⊗ [8, 1] on q).
        var adapter = KroneckerTestFiles.Lokr(Base, [Projection.Q, Projection.Up, Projection.Down], r: 2, alpha: 2,
            shapeOf: (_, p) => p switch
            {
                Projection.Q => new KroneckerShape(1, 8, 8, 1),
                Projection.Up => new KroneckerShape(4, 4, 3, 2),   // [12, 8]: out (4, 3), in (4, 2)
                _ => new KroneckerShape(4, 4, 2, 3),               // down [8, 12]: out (4, 2), in (4, 3)
            });
        adapter.Config["decompose_factor"] = 4;
        var (_, modules) = Load(adapter);
        foreach (var ((layer, p), weights) in modules)
            using (weights) AssertServes(weights, LokrDelta(adapter, layer, p, 1.0), $"layer {layer} {p.ShortName()}");
    }

    /// <summary>
    /// Several tokens go through one of two forms per term (batched per token, or side by side in one GEMM, chosen by
    /// how narrow the per-token product is), in either multiplication order, with one or two stacked components.
    /// </summary>
    [Theory]
    [InlineData(2, 8, 8, 16, 1, true, false)]
    [InlineData(2, 8, 8, 16, 2, true, false)]
    [InlineData(2, 8, 8, 4, 1, true, true)]
    [InlineData(2, 8, 8, 4, 2, true, true)]
    [InlineData(8, 2, 16, 8, 1, false, false)]
    [InlineData(8, 2, 16, 8, 2, false, false)]
    [InlineData(8, 2, 4, 8, 1, false, true)]
    [InlineData(8, 2, 4, 8, 2, false, true)]
    public void Kronecker_terms_serve_several_tokens_exactly_batched_or_side_by_side(int ma, int na, int mb, int nb, int count, bool leftFirst, bool stacksTokens)
    {
        using var scope = NewDisposeScope();
        manual_seed(ma * 1000 + nb * 10 + count);
        var components = Enumerable.Range(0, count).Select(i => (A: randn(ma, na), B: randn(mb, nb), Coefficient: i == 0 ? 0.5 : -1.25)).ToList();
        using var weights = KroneckerWeights.Build(0, Projection.Q, components, CPU, ScalarType.Float32);
        var term = Assert.Single(weights.Terms);
        Assert.Equal((count, leftFirst, stacksTokens), (term.Count, term.LeftFirst, term.StacksTokens));

        var deltaW = zeros(ma * mb, na * nb);                                                 // [d_out, d_in]
        foreach (var (a, b, c) in components) deltaW += kron(a, b) * c;
        AssertServes(weights, deltaW, $"[{ma}, {na}] ⊗ [{mb}, {nb}] × {count}");
    }

    [Fact]
    public void Moka_output_equals_the_gated_sum_of_kron_products_with_components_of_different_shapes()
    {
        using var scope = NewDisposeScope();
        // gate_proj [12, 8]: two equal shapes served right first ([3,2]⊗[4,4]), two left first ([3,4]⊗[4,2]), and three singles.
        KroneckerShape[] gate = [new(3, 2, 4, 4), new(3, 4, 4, 2), new(12, 8, 1, 1), new(3, 2, 4, 4), new(1, 8, 12, 1), new(3, 4, 4, 2), new(6, 2, 2, 4)];
        KroneckerShape[] q = [new(2, 2, 4, 4), new(4, 4, 2, 2), new(8, 8, 1, 1)];
        var adapter = KroneckerTestFiles.Moka(Base, [Projection.Gate, Projection.Q], p => p == Projection.Gate ? gate : q, scaling: 0.75);
        var (description, modules) = Load(adapter);

        Assert.Equal(AdapterKind.Moka, description.Kind);
        var gateWeights = modules[(0, Projection.Gate)];
        Assert.Contains(gateWeights.Terms, t => t.Count == 2 && t.LeftFirst);
        Assert.Contains(gateWeights.Terms, t => t.Count == 2 && !t.LeftFirst);
        Assert.Equal(5, gateWeights.Terms.Count);
        foreach (var ((layer, p), weights) in modules)
        {
            int count = p == Projection.Gate ? gate.Length : q.Length;
            using (weights) AssertServes(weights, MokaDelta(adapter, layer, p, count, 0.75), $"layer {layer} {p.ShortName()}");
        }
    }

    [Fact]
    public void Moka_components_field_applies_to_every_targeted_module_and_component_pattern_wins()
    {
        using var scope = NewDisposeScope();
        KroneckerShape[] common = [new(2, 2, 4, 4), new(2, 2, 4, 4)];
        KroneckerShape[] own = [new(4, 2, 2, 4)];
        var adapter = KroneckerTestFiles.Moka(Base, [Projection.Q, Projection.O], p => p == Projection.O ? own : common);
        adapter.Config.Remove("component_pattern");
        adapter.Config["components"] = Json(common);
        adapter.Config["component_pattern"] = new JsonObject { ["o_proj"] = Json(own) };
        var (description, modules) = Load(adapter);

        Assert.All(description.Modules, m => Assert.Equal(m.Projection == Projection.O ? own : common, m.Components));
        foreach (var ((layer, p), weights) in modules)
            using (weights) AssertServes(weights, MokaDelta(adapter, layer, p, p == Projection.O ? 1 : 2, 1.0), $"layer {layer} {p.ShortName()}");
    }

    [Fact]
    public void A_request_scale_multiplies_the_whole_delta_and_bfloat16_weights_stay_close()
    {
        using var scope = NewDisposeScope();
        var adapter = KroneckerTestFiles.Lokr(Base, [Projection.Up], r: 2, alpha: 4);
        var (_, modules) = Load(adapter);
        using var weights = modules[(1, Projection.Up)];
        var deltaW = LokrDelta(adapter, 1, Projection.Up, 2.0);
        var x = randn(3, 8);
        var y = zeros(3, 12);
        weights.AddTo(x, y, scale: -0.5f);
        Reference.AssertClose(Reference.Linear(x, deltaW * -0.5), y);

        var dir = _temp.Sub($"k{_count++}");
        var (_, bf16) = KroneckerTestFiles.Load(adapter.WriteTo(dir), Base, ScalarType.BFloat16);
        using var half = bf16[(1, Projection.Up)];
        Assert.Equal(ScalarType.BFloat16, half.Terms[0].Left.dtype);
        Reference.AssertClose(Reference.Linear(x, deltaW), half.Delta(x), tolerance: 3e-2);
        foreach (var w in bf16.Values.Where(w => w != half)) w.Dispose();
        foreach (var w in modules.Values.Where(w => w != weights)) w.Dispose();
    }

    [Fact]
    public void A_step_hook_serves_kronecker_groups_on_scattered_rows_next_to_the_base_and_a_merge()
    {
        using var scope = NewDisposeScope();
        var lokrFiles = KroneckerTestFiles.Lokr(Base, [Projection.Up], r: 2, alpha: 4, w2: FactorForm.LowRank, seed: 5);
        var mokaFiles = KroneckerTestFiles.Moka(Base, [Projection.Up], _ => [new KroneckerShape(3, 2, 4, 4), new KroneckerShape(12, 8, 1, 1)], scaling: 0.5, seed: 6);
        using var lokr = Loaded("lokr", lokrFiles);
        using var moka = Loaded("moka", mokaFiles);
        // Rows 0-1 and 5-6 on the LoKr (one group, not contiguous), 2-3 on the base, 4 on 0.7·LoKr + 0.3·MoKA.
        using var batch = new AdapterBatch([
            AdapterSegment.Single(0, 2, lokr), AdapterSegment.Base(2, 2), new AdapterSegment(4, 1, [(lokr, 0.7f), (moka, 0.3f)]),
            AdapterSegment.Single(5, 2, lokr),
        ]);
        var w0 = randn(12, 8);                                                                 // [d_out, d_in]
        var x = randn(7, 8);                                                                   // [7, d_in]
        var y = batch.Apply(1, Projection.Up, x, Reference.Linear(x, w0), w0);
        batch.Complete();

        var lokrW = LokrDelta(lokrFiles, 1, Projection.Up, 2.0);
        var mokaW = MokaDelta(mokaFiles, 1, Projection.Up, 2, 0.5);
        var expected = new[] { lokrW, lokrW, null, null, lokrW * 0.7 + mokaW * 0.3, lokrW, lokrW }
            .Select((d, i) => Reference.Linear(x[i].unsqueeze(0), d is null ? w0 : w0 + d)).ToArray();
        Reference.AssertClose(cat(expected, 0), y);
    }

    private static readonly Projection[] SlotTargets = [Projection.Q, Projection.Up];

    /// <summary>
    /// Four LoKr of one layout (one shared stack per projection; factors whole or low rank, own alpha), one LoKr with
    /// another split ([6, 2] ⊗ [2, 4] for up, [4, 2] ⊗ [2, 4] for q) and two MoKA with several terms, each with its
    /// materialised ΔW(layer, projection).
    /// </summary>
    private List<(LoadedAdapter Adapter, Func<int, Projection, Tensor> Delta)> SlotAdapters()
    {
        var files = new List<(TestAdapter Files, Func<int, Projection, Tensor> Delta)>();
        for (int i = 0; i < 4; i++)
        {
            var lokr = KroneckerTestFiles.Lokr(Base, SlotTargets, r: 2, alpha: 3 + i, w2: i % 2 == 0 ? FactorForm.Whole : FactorForm.LowRank, seed: 30 + i);
            double s = (3.0 + i) / 2;
            files.Add((lokr, (l, p) => LokrDelta(lokr, l, p, s)));
        }
        var split = KroneckerTestFiles.Lokr(Base, SlotTargets, r: 2, alpha: 2, seed: 40,
            shapeOf: (_, p) => p == Projection.Up ? new KroneckerShape(6, 2, 2, 4) : new KroneckerShape(4, 2, 2, 4));
        files.Add((split, (l, p) => LokrDelta(split, l, p, 1.0)));
        KroneckerShape[] up = [new(3, 2, 4, 4), new(12, 8, 1, 1), new(3, 2, 4, 4)], q = [new(2, 2, 4, 4), new(8, 8, 1, 1)];
        for (int i = 0; i < 2; i++)
        {
            var moka = KroneckerTestFiles.Moka(Base, SlotTargets, p => p == Projection.Up ? up : q, scaling: 0.5 + i, seed: 50 + i);
            double scaling = 0.5 + i;
            files.Add((moka, (l, p) => MokaDelta(moka, l, p, p == Projection.Up ? up.Length : q.Length, scaling)));
        }
        return files.Select((f, i) => (Loaded($"kslot{i}", f.Files), f.Delta)).ToList();
    }

    /// <summary>One step over <paramref name="plan"/> (adapter index or null for the base, rows, scale), all from the slots, against the materialised weights.</summary>
    private static void AssertSlotStep(List<(LoadedAdapter Adapter, Func<int, Projection, Tensor> Delta)> adapters, AdapterSlotTable slots, (int? Adapter, int Tokens, float Scale)[] plan)
    {
        var rowDelta = new List<(int Adapter, float Scale)?>();
        var segments = new List<AdapterSegment>();
        foreach (var (adapter, tokens, scale) in plan)
        {
            segments.Add(adapter is { } a ? AdapterSegment.Single(rowDelta.Count, tokens, adapters[a].Adapter, scale) : AdapterSegment.Base(rowDelta.Count, tokens));
            for (int t = 0; t < tokens; t++) rowDelta.Add(adapter is { } aa ? (aa, scale) : null);
        }
        int rows = rowDelta.Count;
        var bank = KroneckerSlotBank.Of(slots);
        long before = bank.GroupsServed;
        using var batch = new AdapterBatch(segments);
        Assert.Equal(plan.Where(p => p.Adapter is not null).Select(p => (p.Adapter, p.Scale)).Distinct().Count(), bank.GroupsServed - before); // all from the stacks
        for (int layer = 0; layer < Base.NumHiddenLayers; layer++)
            foreach (var p in SlotTargets)
            {
                var (dIn, dOut) = Base.ProjectionShape(p);
                var w0 = randn(dOut, dIn);                                                     // [d_out, d_in]
                var x = randn(rows, dIn);                                                      // [rows, d_in]
                var y = batch.Apply(layer, p, x, Reference.Linear(x, w0), w0);
                var expected = rowDelta.Select((d, r) => Reference.Linear(x[r].unsqueeze(0),
                    d is var (a, scale) ? w0 + adapters[a].Delta(layer, p) * scale : w0)).ToArray();
                Reference.AssertClose(cat(expected, 0), y, what: $"layer {layer} {p.ShortName()}");
            }
        batch.Complete();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Many_kronecker_adapters_in_one_step_share_the_slot_stacks_and_each_row_gets_its_own_kron_delta(int tokens)
    {
        using var scope = NewDisposeScope();
        var adapters = SlotAdapters();
        using var slots = new AdapterSlotTable(12);
        foreach (int i in new[] { 3, 0, 6, 1, 5, 2, 4 }) slots.Assign(adapters[i].Adapter);   // slots not in group order
        try
        {
            // base | adapter i with its own scale (tokens rows each) | adapter 0 again at the end (rows not contiguous).
            var plan = new List<(int?, int, float)> { (null, 1, 1f) };
            for (int i = 0; i < adapters.Count; i++) plan.Add((i, tokens, i switch { 2 => 0.5f, 5 => -1.5f, _ => 1f }));
            plan.Add((0, 1, 1f));
            AssertSlotStep(adapters, slots, [.. plan]);
        }
        finally
        {
            foreach (var (a, _) in adapters) a.Dispose();
        }
    }

    [Fact]
    public void A_kronecker_slot_reused_by_another_adapter_serves_the_new_one_and_zeros_where_it_has_no_term()
    {
        using var scope = NewDisposeScope();
        var adapters = SlotAdapters();
        using var slots = new AdapterSlotTable(3);
        try
        {
            foreach (int i in new[] { 0, 4, 5 }) slots.Assign(adapters[i].Adapter);
            AssertSlotStep(adapters, slots, [(0, 1, 1f), (4, 2, 1f), (5, 1, 0.5f)]);
            // The first LoKr leaves and a MoKA takes its slot: that slot of the shared LoKr stack must now read zeros
            // (the rows of the MoKA group go through it as well). A LoKr of the same layout takes the split one's slot.
            slots.Free(adapters[0].Adapter);
            slots.Assign(adapters[6].Adapter);
            slots.Free(adapters[4].Adapter);
            slots.Assign(adapters[1].Adapter);
            AssertSlotStep(adapters, slots, [(1, 1, 1f), (6, 2, 1f), (5, 1, 2f)]);
        }
        finally
        {
            foreach (var (a, _) in adapters) a.Dispose();
        }
    }

    private LoadedAdapter Loaded(string name, TestAdapter adapter)
    {
        string dir = adapter.WriteTo(_temp.Sub($"k{_count++}"));
        var description = AdapterValidator.Validate(dir, Base);
        var now = DateTimeOffset.UnixEpoch;
        var record = new AdapterRecord(name, 1, dir, description, "sha256:test", "test", now, now);
        return LoadedAdapter.Load(record, new NoBaseWeights(), CPU, ScalarType.Float32);
    }

    /// <summary>Kronecker kinds never read the base weights.</summary>
    private sealed class NoBaseWeights : IBaseWeights
    {
        public Tensor Weight(int layer, Projection projection) => throw new InvalidOperationException("not needed by Kronecker kinds");
    }
}
