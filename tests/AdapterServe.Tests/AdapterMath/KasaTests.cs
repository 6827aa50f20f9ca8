using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterMath;

/// <summary>
/// KaSA served as a rank-(removed + r) delta on the shared base equals <c>x @ (W_world + s·B diag(σ) A)ᵀ</c>, with
/// <c>W_world</c> rebuilt in the test from a FULL SVD of W0 keeping the largest components.
/// </summary>
public class KasaTests
{
    static void AssertKasa(Projection p, int layer, int rank, string truncation, int expectedKept)
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var kasa = new TestAdapter("kasa") { Kind = AdapterKind.Kasa, KasaTruncation = truncation }.Module(layer, p, rank, scaling: 2.0, kasa: true);
        using var adapter = kasa.Load(model);

        var w0 = model.Weight(layer, p);
        var expectedWeight = Reference.WorldWeight(w0, expectedKept)
            + kasa.B(layer, p).matmul(diag(kasa.Diag(layer, p))).matmul(kasa.A(layer, p)) * 2.0;   // W_world + s·B diag(σ) A
        var x = model.Input(p, 5);
        using var batch = new AdapterBatch([AdapterSegment.Single(0, 5, adapter)]);
        var y = batch.Apply(layer, p, x, Reference.Linear(x, w0), w0);

        Reference.AssertClose(Reference.Linear(x, expectedWeight), y, what: $"{p} {truncation}");
        long k = Math.Min(w0.shape[0], w0.shape[1]);
        Assert.Equal((int)(k - expectedKept) + rank, adapter.Module(layer, p)!.Rank);
    }

    [Fact]
    public void Kasa_peft_truncation_on_a_square_layer_equals_world_weight_from_full_svd() =>
        AssertKasa(Projection.Q, layer: 0, rank: 4, "peft", expectedKept: 16 - 4);

    [Fact]
    public void Kasa_peft_truncation_on_a_wide_layer_keeps_k_minus_r() =>
        AssertKasa(Projection.Down, layer: 1, rank: 4, "peft", expectedKept: 16 - 4);          // [16, 40]: k = 16

    [Fact]
    public void Kasa_peft_truncation_on_a_tall_layer_keeps_k_minus_r() =>
        AssertKasa(Projection.Up, layer: 0, rank: 4, "peft", expectedKept: 16 - 4);            // [40, 16]: k = 16

    [Fact]
    public void Kasa_official_truncation_does_not_truncate_when_d_in_exceeds_d_out_by_r() =>
        AssertKasa(Projection.Down, layer: 0, rank: 4, "official", expectedKept: 16);          // d_in − r = 36 ≥ k = 16: keep all

    [Fact]
    public void Kasa_official_truncation_removes_fewer_than_r_when_d_in_is_slightly_wider() =>
        AssertKasa(Projection.V, layer: 1, rank: 12, "official", expectedKept: 4);             // [8, 16]: d_in − r = 4 < k = 8

    [Fact]
    public void Kasa_official_truncation_equals_peft_when_d_in_is_the_smaller_side() =>
        AssertKasa(Projection.Up, layer: 1, rank: 4, "official", expectedKept: 16 - 4);        // [40, 16]: d_in − r = k − r

    [Fact]
    public void Kasa_unknown_truncation_rule_is_rejected()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var kasa = new TestAdapter("kasa") { Kind = AdapterKind.Kasa, KasaTruncation = "paper" }.Module(0, Projection.Q, 4, 1.0, kasa: true);
        var e = Assert.Throws<AdapterValidationException>(() => kasa.Load(model));
        Assert.Contains("'paper'", e.Message);
    }
}
