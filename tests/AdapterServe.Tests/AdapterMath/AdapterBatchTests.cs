using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterMath;

/// <summary>One forward step mixing the base, several adapters and a scaled two-adapter merge.</summary>
public class AdapterBatchTests
{
    [Fact]
    public void Mixed_step_gives_every_row_what_it_gets_alone()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var lora = new TestAdapter("lora", seed: 11).Module(0, Projection.Q, 4, 2.0).Module(1, Projection.V, 4, 1.0);
        var dora = new TestAdapter("dora", seed: 12) { Kind = AdapterKind.Dora }.Module(0, Projection.Q, 4, 2.0, dora: true).Module(1, Projection.V, 2, 0.5, dora: true);
        var kasa = new TestAdapter("kasa", seed: 13) { Kind = AdapterKind.Kasa }.Module(0, Projection.Q, 4, 2.0, kasa: true);
        var other = new TestAdapter("other", seed: 14).Module(0, Projection.Q, 2, 4.0);
        using var loraW = lora.Load(model);
        using var doraW = dora.Load(model);
        using var kasaW = kasa.Load(model);
        using var otherW = other.Load(model);

        // token rows: 0-1 base | 2-4 lora | 5-6 dora | 7-9 kasa | 10-11 0.7·lora + 0.3·other | 12 lora (2nd sequence) | 13-14 base
        using var batch = new AdapterBatch([
            AdapterSegment.Base(0, 2),
            AdapterSegment.Single(2, 3, loraW),
            AdapterSegment.Single(5, 2, doraW),
            AdapterSegment.Single(7, 3, kasaW),
            new AdapterSegment(10, 2, [(loraW, 0.7f), (otherW, 0.3f)]),
            AdapterSegment.Single(12, 1, loraW),
            AdapterSegment.Base(13, 2),
        ]);
        Assert.Equal(5, batch.GroupCount); // lora@1, dora@1, kasa@1, lora@0.7, other@0.3: one GEMM pair each

        foreach (var (layer, p) in new[] { (0, Projection.Q), (1, Projection.V) })
        {
            var w0 = model.Weight(layer, p);
            Tensor Delta(TestAdapter a) => a.Targets(layer, p) ? a.B(layer, p).matmul(a.A(layer, p)) * a.Spec(layer, p).Scaling : zeros_like(w0);
            Tensor Alone(int row) => row switch                                              // the weight row `row` sees when run alone
            {
                >= 2 and <= 4 or 12 => w0 + Delta(lora),
                5 or 6 => Reference.MergedDora(w0 + Delta(dora), dora.Magnitude(layer, p)),
                >= 7 and <= 9 => kasa.Targets(layer, p)
                    ? Reference.WorldWeight(w0, 16 - 4) + kasa.B(layer, p).matmul(diag(kasa.Diag(layer, p))).matmul(kasa.A(layer, p)) * 2.0
                    : w0,
                10 or 11 => w0 + Delta(lora) * 0.7 + Delta(other) * 0.3,
                _ => w0,
            };

            var x = model.Input(p, 15);                                                          // [15, d_in]
            var y = batch.Apply(layer, p, x, Reference.Linear(x, w0), w0);                        // [15, d_out]
            for (int row = 0; row < 15; row++)
                Reference.AssertClose(Reference.Linear(x[row].unsqueeze(0), Alone(row)), y[row].unsqueeze(0), what: $"layer {layer} {p} row {row}");
        }
    }

    [Fact]
    public void Step_without_adapters_returns_the_base_output_itself()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        using var batch = new AdapterBatch([AdapterSegment.Base(0, 3), AdapterSegment.Base(3, 2)]);
        var x = model.Input(Projection.Q, 5);
        var baseOutput = Reference.Linear(x, model.Weight(0, Projection.Q));
        Assert.False(batch.HasAdapters);
        Assert.Same(baseOutput, batch.Apply(0, Projection.Q, x, baseOutput, model.Weight(0, Projection.Q)));
    }

    [Fact]
    public void Projection_no_adapter_targets_returns_the_base_output_itself()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        using var adapter = new TestAdapter("q-only").Module(0, Projection.Q, 4, 1.0).Load(model);
        using var batch = new AdapterBatch([AdapterSegment.Single(0, 4, adapter)]);
        var x = model.Input(Projection.Q, 4);
        var baseOutput = Reference.Linear(x, model.Weight(1, Projection.Q));
        Assert.Same(baseOutput, batch.Apply(1, Projection.Q, x, baseOutput, model.Weight(1, Projection.Q)));
    }

    [Fact]
    public void Dora_mixed_with_another_adapter_is_rejected_when_the_step_is_built()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        using var dora = new TestAdapter("shiny-dora") { Kind = AdapterKind.Dora }.Module(0, Projection.Q, 4, 1.0, dora: true).Load(model);
        using var lora = new TestAdapter("plain").Module(0, Projection.Q, 4, 1.0).Load(model);
        var e = Assert.Throws<AdapterValidationException>(() => new AdapterBatch([new AdapterSegment(0, 2, [(lora, 0.5f), (dora, 0.5f)])]));
        Assert.Contains("shiny-dora", e.Message);
        Assert.Contains("DoRA", e.Message);
    }

    [Fact]
    public void Overlapping_segments_are_rejected()
    {
        Assert.Throws<ArgumentException>(() => new AdapterBatch([AdapterSegment.Base(0, 3), AdapterSegment.Base(2, 2)]));
    }

    [Fact]
    public void The_same_adapter_twice_in_one_request_adds_its_scales()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var lora = new TestAdapter("twice").Module(1, Projection.Down, 4, 2.0);
        using var adapter = lora.Load(model);
        using var batch = new AdapterBatch([new AdapterSegment(0, 3, [(adapter, 0.25f), (adapter, 0.5f)])]);
        var w0 = model.Weight(1, Projection.Down);
        var x = model.Input(Projection.Down, 3);
        var expected = Reference.Linear(x, Reference.MergedLora(w0, lora.A(1, Projection.Down), lora.B(1, Projection.Down), 2.0 * 0.75));
        Reference.AssertClose(expected, batch.Apply(1, Projection.Down, x, Reference.Linear(x, w0), w0));
    }

    [Fact]
    public void Steps_leave_no_live_tensors_behind()
    {
        using var outer = NewDisposeScope();
        var model = new TestBase();
        using var lora = new TestAdapter("lora").Module(0, Projection.Q, 4, 2.0).Load(model);
        using var dora = new TestAdapter("dora") { Kind = AdapterKind.Dora }.Module(0, Projection.Q, 4, 2.0, dora: true).Load(model);
        var w0 = model.Weight(0, Projection.Q);

        void Step()
        {
            using var step = NewDisposeScope();
            using var batch = new AdapterBatch([
                AdapterSegment.Single(0, 2, lora), AdapterSegment.Single(2, 2, dora, 0.5f), AdapterSegment.Single(4, 1, lora)]);
            var x = model.Input(Projection.Q, 5);
            batch.Apply(0, Projection.Q, x, Reference.Linear(x, w0), w0);
        }

        Step(); // warm-up: caches DoRA's row factor for scale 0.5 once
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 20; i++) Step();
        Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }
}
