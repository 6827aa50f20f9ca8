using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterMath;

/// <summary>Static kinds: the unmerged hook output equals the output of the materialised merged weight (float32, 1e-5).</summary>
public class LoraMathTests
{
    static Tensor Run(LoadedAdapter adapter, TestBase model, int layer, Projection p, Tensor x, float scale = 1f)
    {
        using var batch = new AdapterBatch([AdapterSegment.Single(0, (int)x.shape[0], adapter, scale)]);
        var w0 = model.Weight(layer, p);
        return batch.Apply(layer, p, x, Reference.Linear(x, w0), w0);
    }

    [Fact]
    public void Lora_output_equals_merged_weight_output()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var lora = new TestAdapter("plain").Module(0, Projection.Q, rank: 4, scaling: 2.0).Module(1, Projection.Down, rank: 4, scaling: 2.0);
        using var adapter = lora.Load(model);

        foreach (var (layer, p) in new[] { (0, Projection.Q), (1, Projection.Down) })
        {
            var x = model.Input(p, 5);                                                               // [5, d_in]
            var expected = Reference.Linear(x, Reference.MergedLora(model.Weight(layer, p), lora.A(layer, p), lora.B(layer, p), 2.0));
            Reference.AssertClose(expected, Run(adapter, model, layer, p, x), what: $"layer {layer} {p}");
        }
    }

    [Fact]
    public void Rslora_scaling_alpha_over_sqrt_rank_is_applied()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        const int rank = 16;
        const double alpha = 8;
        double rsScaling = alpha / Math.Sqrt(rank); // 2.0, where plain LoRA would give 0.5
        var lora = new TestAdapter("rs").Module(0, Projection.Up, rank, rsScaling);
        using var adapter = lora.Load(model);

        var x = model.Input(Projection.Up, 4);
        var expected = Reference.Linear(x, Reference.MergedLora(model.Weight(0, Projection.Up), lora.A(0, Projection.Up), lora.B(0, Projection.Up), alpha / Math.Sqrt(rank)));
        Reference.AssertClose(expected, Run(adapter, model, 0, Projection.Up, x));
        Assert.Equal(rank, adapter.Module(0, Projection.Up)!.Rank);
    }

    [Fact]
    public void Rank_and_alpha_patterns_give_each_module_its_own_rank_and_scaling()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        // As rank_pattern {"q_proj": 2} and alpha_pattern {"layers.1.v_proj": 32} would resolve with r=8, alpha=16.
        var lora = new TestAdapter("patterns")
            .Module(0, Projection.Q, rank: 2, scaling: 16.0 / 2)
            .Module(0, Projection.V, rank: 8, scaling: 16.0 / 8)
            .Module(1, Projection.V, rank: 8, scaling: 32.0 / 8);
        using var adapter = lora.Load(model);

        foreach (var (layer, p, s) in new[] { (0, Projection.Q, 8.0), (0, Projection.V, 2.0), (1, Projection.V, 4.0) })
        {
            var x = model.Input(p, 3);
            var expected = Reference.Linear(x, Reference.MergedLora(model.Weight(layer, p), lora.A(layer, p), lora.B(layer, p), s));
            Reference.AssertClose(expected, Run(adapter, model, layer, p, x), what: $"layer {layer} {p}");
        }
        Assert.Equal(2, adapter.Module(0, Projection.Q)!.Rank);
        Assert.Equal(8, adapter.Module(1, Projection.V)!.Rank);
    }

    [Fact]
    public void Lora_bias_is_scaled_like_the_delta_and_added()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var lora = new TestAdapter("biased").Module(0, Projection.V, rank: 4, scaling: 1.5, bias: true);
        using var adapter = lora.Load(model);

        var x = model.Input(Projection.V, 6);
        // PEFT: result + lora_B(lora_A(x)) * s, where lora_B carries the bias; merged: W0 + s·B·A and b0 + s·b.
        var expected = Reference.Linear(x, Reference.MergedLora(model.Weight(0, Projection.V), lora.A(0, Projection.V), lora.B(0, Projection.V), 1.5))
            + lora.Bias(0, Projection.V) * 1.5;
        Reference.AssertClose(expected, Run(adapter, model, 0, Projection.V, x));
    }

    [Fact]
    public void Fan_in_fan_out_adapter_keeps_peft_factor_shapes_and_output()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        // PEFT stores lora_A [r, d_in] and lora_B [d_out, r] for fan_in_fan_out too; only a Conv1D base is transposed.
        var lora = new TestAdapter("fifo") { FanInFanOut = true }.Module(1, Projection.Up, rank: 4, scaling: 2.0);
        using var adapter = lora.Load(model);

        var x = model.Input(Projection.Up, 3);
        var merged = Reference.MergedLora(model.Weight(1, Projection.Up), lora.A(1, Projection.Up), lora.B(1, Projection.Up), 2.0);
        Reference.AssertClose(Reference.Linear(x, merged), Run(adapter, model, 1, Projection.Up, x));
    }

    [Fact]
    public void Dora_output_equals_magnitude_rescaled_merged_weight_output()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var dora = new TestAdapter("dora") { Kind = AdapterKind.Dora }
            .Module(0, Projection.Q, rank: 4, scaling: 2.0, dora: true)
            .Module(0, Projection.Down, rank: 4, scaling: 0.5, dora: true);
        using var adapter = dora.Load(model);

        foreach (var (p, s) in new[] { (Projection.Q, 2.0), (Projection.Down, 0.5) })
        {
            var x = model.Input(p, 5);
            var merged = Reference.MergedLora(model.Weight(0, p), dora.A(0, p), dora.B(0, p), s);              // W'
            var expected = Reference.Linear(x, Reference.MergedDora(merged, dora.Magnitude(0, p)));           // x @ ((m/n) ⊙ W')ᵀ
            Reference.AssertClose(expected, Run(adapter, model, 0, p, x), what: p.ToString());
        }
    }

    [Fact]
    public void Dora_with_a_request_scale_rescales_with_the_norm_of_the_scaled_merge()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var dora = new TestAdapter("dora") { Kind = AdapterKind.Dora }.Module(1, Projection.V, rank: 4, scaling: 2.0, dora: true);
        using var adapter = dora.Load(model);

        var x = model.Input(Projection.V, 4);
        // PEFT's scale_layer multiplies s: W' = W0 + 0.5·s·B·A, and the norm is W''s.
        var merged = Reference.MergedLora(model.Weight(1, Projection.V), dora.A(1, Projection.V), dora.B(1, Projection.V), 0.5 * 2.0);
        var expected = Reference.Linear(x, Reference.MergedDora(merged, dora.Magnitude(1, Projection.V)));
        Reference.AssertClose(expected, Run(adapter, model, 1, Projection.V, x, scale: 0.5f));
    }

    [Fact]
    public void Loading_names_the_missing_tensor()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var lora = new TestAdapter("holey").Module(0, Projection.Q, rank: 4, scaling: 1);
        string missing = TestAdapter.Prefix(0, Projection.Q) + ".lora_B.weight";
        var e = Assert.Throws<AdapterValidationException>(() =>
            LoraKind.FromTensors(lora.Record(), k => k == missing ? null : lora.Tensors.GetValueOrDefault(k), model, CPU, ScalarType.Float32));
        Assert.Contains(missing, e.Message);
        Assert.Contains("holey", e.Message);
    }

    [Fact]
    public void Loading_names_a_tensor_shaped_for_another_base()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var lora = new TestAdapter("misfit").Module(0, Projection.V, rank: 4, scaling: 1);
        string key = TestAdapter.Prefix(0, Projection.V) + ".lora_B.weight";
        var wrong = randn(12, 4);                                                                            // d_out 12, base has 8
        var e = Assert.Throws<AdapterValidationException>(() =>
            LoraKind.FromTensors(lora.Record(), k => k == key ? wrong : lora.Tensors.GetValueOrDefault(k), model, CPU, ScalarType.Float32));
        Assert.Contains(key, e.Message);
        Assert.Contains("[12, 4]", e.Message);
        Assert.Contains("[8, 4]", e.Message);
    }

    [Fact]
    public void Loaded_adapter_counts_its_bytes_and_stores_the_compute_dtype()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var lora = new TestAdapter("bytes").Module(0, Projection.Q, rank: 4, scaling: 1, bias: true).Module(1, Projection.Up, rank: 2, scaling: 1);
        using var f32 = lora.Load(model);
        using var bf16 = lora.Load(model, ScalarType.BFloat16);

        long f32Elements = (4 * 16 + 16 * 4 + 16) + (2 * 16 + 40 * 2);   // A + B + bias of q; A + B of up
        Assert.Equal(f32Elements * 4, f32.Bytes);
        Assert.Equal(f32Elements * 2, bf16.Bytes);
        Assert.All(bf16.LoraModules().All, m => Assert.Equal(ScalarType.BFloat16, m.A.dtype));
    }

    [Fact]
    public void Load_reads_a_peft_directory_through_safetensors()
    {
        using var scope = NewDisposeScope();
        var model = new TestBase();
        var dir = Directory.CreateTempSubdirectory("adapterserve-adapter-math-");
        try
        {
            var lora = new TestAdapter("on-disk").Module(0, Projection.Q, rank: 4, scaling: 2.0, bias: true).Module(1, Projection.Down, rank: 4, scaling: 2.0);
            lora.WriteDirectory(dir.FullName, r: 4, alpha: 8);
            using var adapter = LoadedAdapter.Load(lora.Record(), model, CPU, ScalarType.Float32);

            var x = model.Input(Projection.Q, 3);
            var expected = Reference.Linear(x, Reference.MergedLora(model.Weight(0, Projection.Q), lora.A(0, Projection.Q), lora.B(0, Projection.Q), 2.0))
                + lora.Bias(0, Projection.Q) * 2.0;
            Reference.AssertClose(expected, Run(adapter, model, 0, Projection.Q, x));
            Assert.Null(adapter.Module(1, Projection.Q));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void Load_of_a_directory_without_weights_is_a_validation_error()
    {
        var model = new TestBase();
        var lora = new TestAdapter("ghost") { Directory = Path.Combine(Path.GetTempPath(), "adapterserve-no-such-adapter-" + Guid.NewGuid()) }
            .Module(0, Projection.Q, rank: 4, scaling: 1);
        var e = Assert.Throws<AdapterValidationException>(() => LoadedAdapter.Load(lora.Record(), model, CPU, ScalarType.Float32));
        Assert.Contains("ghost", e.Message);
        Assert.Contains(LoadedAdapter.WeightsFileName, e.Message);
    }
}
