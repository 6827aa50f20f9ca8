using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Smore;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Smore;

/// <summary>S'MoRE directories checked against the base: good ones described, bad ones refused with a 400 naming the field or tensor.</summary>
public sealed class SmoreValidationTests
{
    private static readonly ModelConfig Base = TestAdapter.TinyBase;
    private static readonly SmoreShape TwoLevels = new([4, 3], [2, 2], [2, 3], [5, 4], GateType: "noisy_topk");
    private static readonly (int, Projection)[] MlpModules = [(0, Projection.Gate), (0, Projection.Up), (1, Projection.Down)];

    [Fact]
    public void A_good_directory_is_described_with_its_modules_and_expert_labels()
    {
        var adapter = new SmoreTestAdapter(TwoLevels, Base, MlpModules);
        var description = SmoreValidator.Validate(adapter.WriteTemp(), Base);

        Assert.Equal(MlpModules.Select(m => (m.Item1, m.Item2)), description.Modules.Select(m => (m.Layer, m.Projection)));
        Assert.Equal(["l0.0", "l0.1", "l0.2", "l0.3", "l1.0", "l1.1", "l1.2"], description.ExpertLabels);
        Assert.Equal(SmoreGateType.NoisyTopK, description.Config.GateType);
        Assert.Equal(adapter.Tensors.Values.Sum(t => t.NumberOfElements * 4), description.WeightBytes);
    }

    [Fact]
    public void The_dense_gate_uses_every_expert_whatever_num_active_says()
    {
        var config = SmoreConfig.Parse(new SmoreTestAdapter(TwoLevels with { GateType = "dense", Active = [1, 1] }, Base, MlpModules).Config);
        Assert.Equal([4, 3], Enumerable.Range(0, 2).Select(config.FanOut));
        Assert.Equal(12, config.PathsAt(0));
    }

    public static TheoryData<string, string> BadConfigs() => new()
    {
        { """{"gate_type": "softmax_topk"}""", "'gate_type'" },
        { """{"expert_act_fn": "gelu"}""", "'expert_act_fn'" },
        { """{"gate_act_fn": "swish"}""", "'gate_act_fn'" },
        { """{"moe_arch": "llama_moe"}""", "'moe_arch'" },
        { """{"num_active": [5, 2]}""", "'num_active'" },
        { """{"num_active": [0, 2]}""", "'num_active'" },
        { """{"expert_dims": [2]}""", "'expert_dims'" },
        { """{"lora_alpha": [4.0]}""", "'lora_alpha'" },
        { """{"lora_alpha": [4.0, 6.0], "lora_scaling": [1.0, 1.0]}""", "'lora_scaling'" },
        { """{"gate_dims": [5, 4, 3]}""", "'gate_dims'" },
        { """{"gate_arch": "linear"}""", "'gate_arch'" },
        { """{"is_shared_expert_pool": true}""", "'is_shared_expert_pool'" },
        { """{"activation_position": "parent"}""", "'activation_position'" },
        { """{"layer_forward_mode": "loop"}""", "'layer_forward_mode'" },
        { """{"init_method": "pissa"}""", "'init_method'" },
        { """{"init_moe_weights": "pissa"}""", "'init_moe_weights'" },
        { """{"bias": "all"}""", "'bias'" },
        { """{"modules_to_save": ["lm_head"]}""", "'modules_to_save'" },
        { """{"moe_dropout": 1.5}""", "'moe_dropout'" },
        { """{"use_dora": true}""", "'use_dora'" },
        { """{"peft_type": "LORA"}""", "'peft_type'" },
    };

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public void A_config_field_that_cannot_be_honoured_is_refused_by_name(string patch, string named)
    {
        var adapter = new SmoreTestAdapter(TwoLevels, Base, MlpModules);
        foreach (var (key, value) in JsonNode.Parse(patch)!.AsObject()) adapter.Config[key] = value?.DeepClone();
        var e = Assert.Throws<AdapterValidationException>(() => SmoreValidator.Validate(adapter.WriteTemp(), Base));
        Assert.Equal(400, e.StatusCode);
        Assert.Contains(named, e.Message);
    }

    public static TheoryData<string, string> BadTensors() => new()
    {
        // The leaf's B writes d_1 = s_0·r_0 = 8 rows; 9 does not chain into sub-layer 1.
        { "moe_B.0:4,9,2", "moe_B.0" },
        // W_1 maps d_1 = 8 → d_2 = 17; a [17, 9] W does not chain.
        { "moe_W.1:17,9", "moe_W.1" },
        { "moe_W_final:12,16", "moe_W_final" },
        // The base's up_proj reads d_in = 8.
        { "moe_A.0:4,2,12", "moe_A.0" },
        // The leaf's router reads dim_downproj_x + gate_dims[1] = 6 + 4.
        { "moe_gate.0.mlp.0.weight:5,6", "moe_gate.0.mlp.0.weight" },
        { "moe_gate.1.keys:4,4", "moe_gate.1.keys" },
    };

    [Theory]
    [MemberData(nameof(BadTensors))]
    public void Levels_whose_dimensions_do_not_chain_or_do_not_fit_the_base_are_refused_naming_the_tensor(string replacement, string named)
    {
        var adapter = new SmoreTestAdapter(TwoLevels, Base, [(0, Projection.Up)]);
        var (suffix, dims) = (replacement.Split(':')[0], replacement.Split(':')[1].Split(',').Select(long.Parse).ToArray());
        adapter.Tensors[$"{SmoreTestAdapter.Prefix(0, Projection.Up)}.{suffix}"] = zeros(dims);
        var e = Assert.Throws<AdapterValidationException>(() => SmoreValidator.Validate(adapter.WriteTemp(), Base));
        Assert.Equal(400, e.StatusCode);
        Assert.Contains($"{SmoreTestAdapter.Prefix(0, Projection.Up)}.{named}'", e.Message);
        Assert.Equal("shape_mismatch", e.Code);
    }

    [Theory]
    [InlineData(float.NaN, "NaN")]
    [InlineData(float.PositiveInfinity, "Inf")]
    public void Non_finite_weights_are_refused_naming_the_tensor(float bad, string what)
    {
        var adapter = new SmoreTestAdapter(TwoLevels, Base, [(0, Projection.Up)]);
        string key = $"{SmoreTestAdapter.Prefix(0, Projection.Up)}.moe_gate.1.keys";
        var values = adapter.Tensors[key].clone();
        values[2, 1] = tensor(bad);
        adapter.Tensors[key] = values;
        var e = Assert.Throws<AdapterValidationException>(() => SmoreValidator.Validate(adapter.WriteTemp(), Base));
        Assert.Contains($"'{key}'", e.Message);
        Assert.Contains(what, e.Message);
        Assert.Contains("element 9", e.Message);
    }

    [Fact]
    public void A_missing_tensor_is_refused_by_name()
    {
        var adapter = new SmoreTestAdapter(TwoLevels, Base, [(0, Projection.Up)]);
        string key = $"{SmoreTestAdapter.Prefix(0, Projection.Up)}.moe_A_bias.1";
        adapter.Tensors.Remove(key);
        var e = Assert.Throws<AdapterValidationException>(() => SmoreValidator.Validate(adapter.WriteTemp(), Base));
        Assert.Contains($"'{key}'", e.Message);
        Assert.Equal("missing_tensor", e.Code);
    }

    [Fact]
    public void An_unknown_tensor_and_an_untargeted_module_are_refused()
    {
        var adapter = new SmoreTestAdapter(TwoLevels, Base, [(0, Projection.Up)]);
        adapter.Tensors[$"{SmoreTestAdapter.Prefix(0, Projection.Up)}.moe_C.0"] = zeros(2);
        var e = Assert.Throws<AdapterValidationException>(() => SmoreValidator.Validate(adapter.WriteTemp(), Base));
        Assert.Contains("moe_C.0", e.Message);

        var untargeted = new SmoreTestAdapter(TwoLevels, Base, [(0, Projection.Up)]);
        untargeted.Config["target_modules"] = new JsonArray("gate_proj", "down_proj");
        e = Assert.Throws<AdapterValidationException>(() => SmoreValidator.Validate(untargeted.WriteTemp(), Base));
        Assert.Contains("model.layers.0.mlp.up_proj", e.Message);
    }

    [Fact]
    public void The_noise_weight_of_a_noisy_gate_is_optional_and_unused()
    {
        var adapter = new SmoreTestAdapter(TwoLevels, Base, [(0, Projection.Up)]);
        foreach (var key in adapter.Tensors.Keys.Where(k => k.EndsWith("weight_noise.weight", StringComparison.Ordinal)).ToList())
            adapter.Tensors.Remove(key);
        Assert.Single(SmoreValidator.Validate(adapter.WriteTemp(), Base).Modules);
    }
}
