using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Modeling;
using Prometheus;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterMath;

/// <summary>
/// Stacked adapter slots: one batched matmul pair per projection serves every plain LoRA of a step, and each row still
/// gets exactly <c>x (W0 + scale·s·B·A)ᵀ</c> of its own adapter; slots follow the residency cache's device tier.
/// </summary>
public class AdapterSlotTests
{
    static readonly (int Layer, Projection Projection)[] Modules = [(0, Projection.Q), (0, Projection.V), (1, Projection.Up), (1, Projection.Down)];

    /// <summary>Adapter i: rank 1 + i % 8, its own alpha, rsLoRA for odd i, and not every adapter targets every module.</summary>
    static TestAdapter Distinct(int i)
    {
        int rank = 1 + i % 8;
        double alpha = 1.0 + 0.5 * i;
        double scaling = i % 2 == 1 ? alpha / Math.Sqrt(rank) : alpha / rank;
        var adapter = new TestAdapter($"a{i}", seed: 100 + i);
        foreach (var (layer, p) in Modules)
            if ((i + (int)p) % 5 != 0) adapter.Module(layer, p, rank, scaling);
        return adapter;
    }

    [Fact]
    public void Sixteen_distinct_adapters_in_one_step_give_every_row_its_merged_weight()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var sources = Enumerable.Range(0, 16).Select(Distinct).ToArray();
        var loaded = sources.Select(s => s.Load(model)).ToArray();
        using var slots = new AdapterSlotTable(24);
        foreach (var a in loaded.Reverse()) slots.Assign(a);                      // slots not in group order: a gathered stack

        // rows: 0 base | then adapter i gets 1 + i % 3 rows | a0·0.5 (second sequence) | 0.7·a3 + 0.3·a9 | base
        var segments = new List<AdapterSegment> { AdapterSegment.Base(0, 1) };
        var rowWeights = new List<Func<int, Projection, Tensor>> { (l, p) => model.Weight(l, p) };
        Tensor Merged(int i, int l, Projection p, double scale) =>
            sources[i].Targets(l, p) ? TorchScalars.Mul(sources[i].B(l, p).matmul(sources[i].A(l, p)), sources[i].Spec(l, p).Scaling * scale) : zeros_like(model.Weight(l, p));
        int row = 1;
        for (int i = 0; i < 16; i++)
        {
            int n = 1 + i % 3, adapter = i;
            segments.Add(AdapterSegment.Single(row, n, loaded[i]));
            for (int k = 0; k < n; k++) rowWeights.Add((l, p) => TorchScalars.Add(model.Weight(l, p), Merged(adapter, l, p, 1.0)));
            row += n;
        }
        segments.Add(AdapterSegment.Single(row, 2, loaded[0], 0.5f));
        rowWeights.AddRange(Enumerable.Repeat<Func<int, Projection, Tensor>>((l, p) => TorchScalars.Add(model.Weight(l, p), Merged(0, l, p, 0.5)), 2));
        row += 2;
        segments.Add(new AdapterSegment(row, 1, [(loaded[3], 0.7f), (loaded[9], 0.3f)]));
        rowWeights.Add((l, p) => TorchScalars.Add(TorchScalars.Add(model.Weight(l, p), Merged(3, l, p, 0.7)), Merged(9, l, p, 0.3)));
        row += 1;
        segments.Add(AdapterSegment.Base(row, 1));
        rowWeights.Add((l, p) => model.Weight(l, p));
        int rows = row + 1;

        var bank = LoraSlotBank.Of(slots);
        using var batch = new AdapterBatch(segments);
        Assert.Equal(19, bank.GroupsServed);                                        // 16 adapters + a0·0.5 + a3·0.7 + a9·0.3, all from the stacks

        foreach (var (layer, p) in Modules)
        {
            var w0 = model.Weight(layer, p);
            var x = model.Input(p, rows);                                           // [rows, d_in]
            var y = batch.Apply(layer, p, x, Reference.Linear(x, w0), w0);          // [rows, d_out]
            for (int r = 0; r < rows; r++)
                Reference.AssertClose(Reference.Linear(x[r].unsqueeze(0), rowWeights[r](layer, p)), y[r].unsqueeze(0), what: $"layer {layer} {p} row {r}");
        }
    }

    [Fact]
    public void A_slot_reused_by_another_adapter_serves_the_new_one_and_zeros_where_it_has_no_module()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var first = new TestAdapter("first", seed: 1).Module(0, Projection.Q, 8, 2.0).Module(1, Projection.Down, 8, 1.0);
        var second = new TestAdapter("second", seed: 2).Module(0, Projection.Q, 2, 3.0);           // no Down: its slot must be zeros there
        var other = new TestAdapter("other", seed: 3).Module(0, Projection.Q, 4, 1.0).Module(1, Projection.Down, 4, 1.0);
        using var firstW = first.Load(model);
        using var secondW = second.Load(model);
        var third = new TestAdapter("third", seed: 4).Module(1, Projection.Down, 16, 0.5);          // rank 16: every stack grows to r 16
        using var otherW = other.Load(model);
        using var thirdW = third.Load(model);
        using var slots = new AdapterSlotTable(3);

        void Step(LoadedAdapter a, TestAdapter source)
        {
            using var batch = new AdapterBatch([AdapterSegment.Single(0, 2, a), AdapterSegment.Single(2, 1, otherW), AdapterSegment.Single(3, 1, thirdW, 2f)]);
            foreach (var (layer, p) in new[] { (0, Projection.Q), (1, Projection.Down) })
            {
                var w0 = model.Weight(layer, p);
                var x = model.Input(p, 4);
                var y = batch.Apply(layer, p, x, Reference.Linear(x, w0), w0);
                var mine = source.Targets(layer, p) ? Reference.MergedLora(w0, source.A(layer, p), source.B(layer, p), source.Spec(layer, p).Scaling) : w0;
                Reference.AssertClose(Reference.Linear(x.narrow(0, 0, 2), mine), y.narrow(0, 0, 2), what: $"{source.Name} layer {layer} {p}");
                Reference.AssertClose(Reference.Linear(x.narrow(0, 2, 1), Reference.MergedLora(w0, other.A(layer, p), other.B(layer, p), 1.0)),
                    y.narrow(0, 2, 1), what: $"other layer {layer} {p}");
                var thirds = third.Targets(layer, p) ? Reference.MergedLora(w0, third.A(layer, p), third.B(layer, p), 0.5 * 2) : w0;
                Reference.AssertClose(Reference.Linear(x.narrow(0, 3, 1), thirds), y.narrow(0, 3, 1), what: $"third layer {layer} {p}");
            }
        }

        slots.Assign(firstW);
        slots.Assign(otherW);
        slots.Assign(thirdW);
        Step(firstW, first);
        int slot = firstW.Slot!.Index;
        slots.Free(firstW);
        Assert.Null(firstW.Slot);
        Assert.Equal(slot, slots.Assign(secondW).Index);                            // the freed slot, a new occupant
        Step(secondW, second);
        Assert.Equal(6, LoraSlotBank.Of(slots).GroupsServed);
    }

    [Fact]
    public void Slots_follow_the_device_tier_evicted_versions_free_theirs_and_a_replaced_version_gets_its_own()
    {
        var model = new TestBase();
        var sources = new Dictionary<(string, int), TestAdapter>
        {
            [("a", 1)] = new TestAdapter("a", 1, 1).Module(0, Projection.Q, 4, 2.0),
            [("b", 1)] = new TestAdapter("b", 1, 2).Module(0, Projection.Q, 4, 2.0),
            [("a", 2)] = new TestAdapter("a", 2, 3).Module(0, Projection.Q, 4, 2.0),
        };
        using var cache = new AdapterResidencyCache(new ResidencyOptions { MaxDeviceAdapters = 2 },
            r => LoraKind.FromTensors(r, k => sources[(r.Name, r.Version)].Tensors.GetValueOrDefault(k), model, CPU, ScalarType.Float32), CPU,
            metrics: new AdapterResidencyMetrics(Metrics.WithCustomRegistry(Metrics.NewCustomRegistry())));
        LoadedAdapter Ready(AdapterLease lease)
        {
            Assert.True(lease.HostLoaded.Wait(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken));
            Assert.True(cache.TryGetReady(lease, out var adapter));
            return adapter;
        }

        var a1Lease = cache.Acquire(sources[("a", 1)].Record());                  // a running sequence on a v1
        var a1 = Ready(a1Lease);
        var bLease = cache.Acquire(sources[("b", 1)].Record());
        var b = Ready(bLease);
        Assert.Equal([1, 2], new[] { a1.Slot!.Index, b.Slot!.Index });
        Assert.Equal(2, cache.Slots.Count);

        cache.Release(bLease);                                                      // b idle: evictable
        var a2Lease = cache.Acquire(sources[("a", 2)].Record());                  // a replaced: v2 for new requests
        var a2 = Ready(a2Lease);
        Assert.Null(b.Slot);                                                        // evicted, slot freed ...
        Assert.Equal(2, a2.Slot!.Index);                                            // ... and given to the new version
        Assert.Same(a1.Slot, a1.Slot);
        Assert.Equal(1, a1.Slot!.Index);                                            // the running sequence keeps its version and slot
        Assert.Equal(2, cache.Slots.Count);

        cache.Release(a1Lease);
        cache.Forget("a");                                                          // v1 unused now: dropped, its slot freed
        Assert.Null(a1.Slot);
        Assert.Equal(1, cache.Slots.Count);
        cache.Release(a2Lease);
    }
}
