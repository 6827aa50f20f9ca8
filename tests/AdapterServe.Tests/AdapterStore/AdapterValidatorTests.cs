using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using static TorchSharp.torch;

using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.AdapterStore;

public class AdapterValidatorTests : IDisposable
{
    private readonly TempFolder _temp = new();
    private int _count;

    private LoraDescription Validate(TestAdapter adapter, ModelConfig? baseModel = null) =>
        (LoraDescription)AdapterValidator.Validate(adapter.WriteTo(_temp.Sub($"a{_count++}")), baseModel ?? TestAdapter.TinyBase);

    private AdapterValidationException Refused(TestAdapter adapter) =>
        Assert.Throws<AdapterValidationException>(() => Validate(adapter));

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Lora_description_lists_every_module_with_rank_scaling_prefix_and_bytes()
    {
        var d = Validate(TestAdapter.Lora(r: 2, alpha: 4, projections: [Projection.Q, Projection.V]));

        Assert.Equal(AdapterKind.Lora, d.Kind);
        Assert.Equal(
            ["0 Q", "0 V", "1 Q", "1 V"],
            d.Modules.Select(m => $"{m.Layer} {m.Projection}"));
        Assert.All(d.Modules, m => Assert.Equal(2, m.Rank));
        Assert.All(d.Modules, m => Assert.Equal(2.0, m.Scaling, 12));
        Assert.All(d.Modules, m => Assert.False(m.HasBias || m.HasMagnitude || m.HasDiag));
        Assert.Equal("base_model.model.model.layers.1.self_attn.v_proj", d.Modules[3].TensorPrefix);
        // q: A [2,8] + B [8,2] = 32 floats; v: A [2,8] + B [4,2] = 24 floats; two layers; 4 bytes each.
        Assert.Equal((32 + 24) * 2 * 4, d.WeightBytes);
        Assert.Equal(["q_proj", "v_proj"], d.TargetModules);
    }

    [Fact]
    public void RsLora_scaling_is_alpha_over_square_root_of_rank()
    {
        var adapter = TestAdapter.Lora(r: 4, alpha: 8);
        adapter.Config["use_rslora"] = true;
        Assert.All(Validate(adapter).Modules, m => Assert.Equal(8 / 2.0, m.Scaling, 12));
    }

    [Fact]
    public void Rank_and_alpha_patterns_apply_per_module_and_the_first_matching_key_wins()
    {
        var adapter = TestAdapter.Lora(r: 2, alpha: 4, rankOf: (layer, p) => p == Projection.Q ? (layer == 1 ? 4 : 3) : 2);
        adapter.Config["rank_pattern"] = new JsonObject { ["model.layers.1.self_attn.q_proj"] = 4, ["q_proj"] = 3 };
        adapter.Config["alpha_pattern"] = new JsonObject { [@"layers\.0\.self_attn\.v_proj"] = 12, ["v_proj"] = 2, ["proj"] = 100 };

        var scaling = Validate(adapter).Modules.ToDictionary(m => $"{m.Layer} {m.Projection}", m => (m.Rank, m.Scaling));

        Assert.Equal((3, 4 / 3.0), scaling["0 Q"]);   // rank from "q_proj"; alpha default ("proj" is no dotted suffix)
        Assert.Equal((4, 4 / 4.0), scaling["1 Q"]);   // the full path key comes first
        Assert.Equal((2, 12 / 2.0), scaling["0 V"]);  // regex key before "v_proj"
        Assert.Equal((2, 2 / 2.0), scaling["1 V"]);
    }

    [Fact]
    public void Rank_pattern_with_rslora_uses_each_modules_own_rank()
    {
        var adapter = TestAdapter.Lora(r: 4, alpha: 8, rankOf: (_, p) => p == Projection.V ? 16 : 4);
        adapter.Config["use_rslora"] = true;
        adapter.Config["rank_pattern"] = new JsonObject { ["v_proj"] = 16 };
        var modules = Validate(adapter).Modules;
        Assert.All(modules.Where(m => m.Projection == Projection.Q), m => Assert.Equal(8 / 2.0, m.Scaling, 12));
        Assert.All(modules.Where(m => m.Projection == Projection.V), m => Assert.Equal(8 / 4.0, m.Scaling, 12));
    }

    [Fact]
    public void Target_modules_string_is_a_full_match_regex()
    {
        var adapter = TestAdapter.Lora(projections: [Projection.Q]);
        adapter.Config["target_modules"] = @"model\.layers\.\d+\.self_attn\.q_proj";
        Assert.Equal(2, Validate(adapter).Modules.Count);

        adapter.Config["target_modules"] = @"model\.layers\.0\.self_attn\.q_proj";
        var e = Refused(adapter);
        Assert.Contains("model.layers.1.self_attn.q_proj", e.Message);
        Assert.Contains("does not target", e.Message);
    }

    [Fact]
    public void All_linear_targets_the_seven_projections()
    {
        var adapter = TestAdapter.Lora(projections: ProjectionNames.All);
        adapter.Config["target_modules"] = "all-linear";
        var d = Validate(adapter);
        Assert.Equal(14, d.Modules.Count);
        Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], d.TargetModules);
    }

    [Fact]
    public void Target_modules_list_matches_names_and_dotted_suffixes_only()
    {
        var adapter = TestAdapter.Lora(projections: [Projection.Q]);
        adapter.Config["target_modules"] = new JsonArray("self_attn.q_proj");
        Assert.Equal(2, Validate(adapter).Modules.Count);

        adapter.Config["target_modules"] = new JsonArray("_proj");
        Assert.Contains("does not target", Refused(adapter).Message);
    }

    [Fact]
    public void Layers_to_transform_limits_the_targeted_layers()
    {
        var adapter = TestAdapter.Lora(projections: [Projection.Q]);
        adapter.Config["layers_to_transform"] = 0;
        Assert.Contains("model.layers.1.self_attn.q_proj", Refused(adapter).Message);
        adapter.Remove(TestAdapter.Prefix(1, Projection.Q) + ".lora_A.weight").Remove(TestAdapter.Prefix(1, Projection.Q) + ".lora_B.weight");
        Assert.Single(Validate(adapter).Modules);
    }

    [Fact]
    public void Dora_adapter_has_a_magnitude_vector_per_module()
    {
        var adapter = TestAdapter.Lora(projections: [Projection.K]);
        adapter.Config["use_dora"] = true;
        var random = new Random(3);
        for (int layer = 0; layer < 2; layer++) adapter.Add(TestAdapter.Prefix(layer, Projection.K) + ".lora_magnitude_vector", [4], random);
        var d = Validate(adapter);
        Assert.Equal(AdapterKind.Dora, d.Kind);
        Assert.All(d.Modules, m => Assert.True(m.HasMagnitude));

        adapter.Remove(TestAdapter.Prefix(1, Projection.K) + ".lora_magnitude_vector");
        Assert.Contains("model.layers.1.self_attn.k_proj.lora_magnitude_vector' is missing", Refused(adapter).Message);
    }

    [Fact]
    public void Dora_magnitude_of_the_wrong_length_is_refused()
    {
        var adapter = TestAdapter.Lora(projections: [Projection.K]);
        adapter.Config["use_dora"] = true;
        var random = new Random(3);
        adapter.Add(TestAdapter.Prefix(0, Projection.K) + ".lora_magnitude_vector", [4], random);
        adapter.Add(TestAdapter.Prefix(1, Projection.K) + ".lora_magnitude_vector", [8], random);
        var e = Refused(adapter);
        Assert.Contains("layers.1.self_attn.k_proj.lora_magnitude_vector' has shape [8]; expected [4]", e.Message);
    }

    [Fact]
    public void Kasa_adapter_is_recognised_by_lora_diag_keys_with_peft_truncation_by_default()
    {
        var adapter = TestAdapter.Lora(r: 3, projections: [Projection.Down]);
        var random = new Random(4);
        for (int layer = 0; layer < 2; layer++) adapter.Add(TestAdapter.Prefix(layer, Projection.Down) + ".lora_diag", [3], random);
        var d = Validate(adapter);
        Assert.Equal(AdapterKind.Kasa, d.Kind);
        Assert.Equal("peft", d.KasaTruncation);
        Assert.All(d.Modules, m => Assert.True(m.HasDiag));

        adapter.Config["kasa_config"] = new JsonObject { ["truncation"] = "official" };
        Assert.Equal("official", Validate(adapter).KasaTruncation);
    }

    [Fact]
    public void Kasa_config_without_diag_tensors_is_refused()
    {
        var adapter = TestAdapter.Lora();
        adapter.Config["kasa_config"] = new JsonObject();
        Assert.Contains("lora_diag' is missing", Refused(adapter).Message);
    }

    [Fact]
    public void Lora_bias_true_needs_a_bias_of_d_out_per_module()
    {
        var adapter = TestAdapter.Lora(projections: [Projection.Gate]);
        adapter.Config["lora_bias"] = true;
        var random = new Random(5);
        for (int layer = 0; layer < 2; layer++) adapter.Add(TestAdapter.Prefix(layer, Projection.Gate) + ".lora_B.bias", [12], random);
        Assert.All(Validate(adapter).Modules, m => Assert.True(m.HasBias));

        adapter.Config["lora_bias"] = false;
        Assert.Contains("lora_bias false", Refused(adapter).Message);
    }

    public static TheoryData<string, string> UnsupportedConfigs() => new()
    {
        { """{"init_lora_weights": "pissa"}""", "pissa" },
        { """{"init_lora_weights": "pissa_niter_4"}""", "pissa_niter_4" },
        { """{"init_lora_weights": "olora"}""", "olora" },
        { """{"init_lora_weights": "corda"}""", "corda" },
        { """{"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4}}""", "loftq" },
        { """{"init_lora_weights": "mica"}""", "mica" },
        { """{"modules_to_save": ["lm_head"]}""", "modules_to_save" },
        { """{"layer_replication": [[0, 1], [0, 2]]}""", "layer_replication" },
        { """{"megatron_config": {"tensor_model_parallel_size": 2}}""", "megatron_config" },
        { """{"trainable_token_indices": [1, 2]}""", "trainable_token_indices" },
        { """{"target_parameters": ["mlp.experts.gate_up_proj"]}""", "target_parameters" },
        { """{"use_qalora": true}""", "use_qalora" },
        { """{"fancy_variant_config": {"k": 1}}""", "fancy_variant_config" },
        { """{"use_fancy_trick": true}""", "use_fancy_trick" },
        { """{"bias": "all"}""", "bias 'all'" },
        { """{"peft_type": "LOKR"}""", "peft_type 'LOKR'" },
        { """{"r": "eight"}""", "'r'" },
        { """{"target_modules": 5}""", "target_modules" },
        { """{"rank_pattern": {"q_proj(": 4}}""", "rank_pattern key 'q_proj('" },
    };

    [Theory]
    [MemberData(nameof(UnsupportedConfigs))]
    public void Unsupported_or_malformed_config_is_refused_naming_the_field(string patch, string named)
    {
        var adapter = TestAdapter.Lora();
        foreach (var (key, value) in JsonNode.Parse(patch)!.AsObject()) adapter.Config[key] = value?.DeepClone();
        var e = Refused(adapter);
        Assert.Contains("adapter_config.json", e.Message);
        Assert.Contains(named, e.Message);
    }

    [Fact]
    public void Harmless_defaults_of_newer_peft_versions_are_accepted()
    {
        var adapter = TestAdapter.Lora();
        adapter.Config["loftq_config"] = new JsonObject();
        adapter.Config["eva_config"] = null;
        adapter.Config["corda_config"] = null;
        adapter.Config["megatron_config"] = null;
        adapter.Config["layer_replication"] = null;
        adapter.Config["use_qalora"] = false;
        adapter.Config["init_lora_weights"] = "gaussian";
        adapter.Config["exclude_modules"] = null;
        Assert.Equal(4, Validate(adapter).Modules.Count);
    }

    public static TheoryData<string, string> BadTensors() => new()
    {
        { "wrong_shape", "lora_A.weight' has shape [2, 7]; expected [r, 8]" },
        { "b_wrong_out", "lora_B.weight' has shape [5, 2]; expected [4, r]" },
        { "rank_mismatch", "has rank 3 but lora_A has rank 2" },
        { "rank_not_config_r", "has rank 3 but adapter_config.json gives r = 2" },
        { "missing_b", "layers.0.self_attn.q_proj.lora_B.weight' is missing" },
        { "missing_a", "layers.1.self_attn.v_proj.lora_A.weight' is missing" },
        { "unknown_module", "unknown module 'model.layers.0.self_attn.qkv_proj'" },
        { "lm_head", "unknown module 'lm_head'" },
        { "layer_out_of_range", "is for layer 2, but the base model has 2 layers" },
        { "huge_layer_index", "is for layer 99999999999, but the base model has 2 layers" },
        { "no_prefix", "does not start with 'base_model.model.'" },
        { "unknown_suffix", "is not a LoRA tensor this server knows" },
        { "nan", "holds NaN" },
        { "inf", "holds Inf" },
        { "f16_inf", "holds Inf" },
        { "bf16_nan", "holds NaN" },
        { "i32", "has dtype I32" },
        { "f64", "has dtype F64" },
        { "untargeted", "does not target" },
        { "empty", "holds no LoRA weights" },
    };

    [Theory]
    [MemberData(nameof(BadTensors))]
    public void Bad_tensors_are_refused_naming_the_tensor(string kind, string expected)
    {
        var e = Refused(BadAdapters.Tensors(kind));
        Assert.Contains("adapter_model.safetensors", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Truncated_safetensors_is_refused_as_invalid_safetensors()
    {
        string dir = TestAdapter.Lora().WriteTo(_temp.Sub("truncated"));
        string file = Path.Combine(dir, "adapter_model.safetensors");
        var bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes[..(bytes.Length - 10)]);
        var e = Assert.Throws<AdapterValidationException>(() => AdapterValidator.Validate(dir, TestAdapter.TinyBase));
        Assert.Equal("invalid_safetensors", e.Code);
        Assert.StartsWith("adapter_model.safetensors:", e.Message);
        Assert.DoesNotContain(_temp.Path, e.Message);
    }

    [Fact]
    public void Missing_files_are_named()
    {
        string dir = TestAdapter.Lora().WriteTo(_temp.Sub("missing"));
        File.Delete(Path.Combine(dir, "adapter_model.safetensors"));
        File.WriteAllBytes(Path.Combine(dir, "adapter_model.bin"), [1, 2, 3]);
        var e = Assert.Throws<AdapterValidationException>(() => AdapterValidator.Validate(dir, TestAdapter.TinyBase));
        Assert.Contains("adapter_model.safetensors is missing", e.Message);
        Assert.Contains("adapter_model.bin", e.Message);

        File.Delete(Path.Combine(dir, "adapter_config.json"));
        e = Assert.Throws<AdapterValidationException>(() => AdapterValidator.Validate(dir, TestAdapter.TinyBase));
        Assert.Contains("adapter_config.json is missing", e.Message);
    }

    [Fact]
    public void Header_only_validation_does_not_read_the_weights()
    {
        string dir = BadAdapters.Tensors("nan").WriteTo(_temp.Sub("nan"));
        var d = (LoraDescription)AdapterValidator.Validate(dir, TestAdapter.TinyBase, new AdapterValidationOptions(ScanWeights: false));
        Assert.Equal(4, d.Modules.Count);
    }

    [Theory]
    [InlineData("zara")]
    [InlineData("forest")]
    public void Real_peft_adapters_validate_against_stories260K(string name)
    {
        string models = SharedModels.Require("");
        var baseModel = ModelConfig.Load(Path.Combine(models, "stories260K-hf", "config.json"));
        var d = (LoraDescription)AdapterValidator.Validate(Path.Combine(models, "adapters", name), baseModel);

        Assert.Equal(AdapterKind.Lora, d.Kind);
        Assert.Equal(5 * 7, d.Modules.Count);
        Assert.All(d.Modules, m => Assert.Equal((8, 16 / 8.0), (m.Rank, m.Scaling)));
        // dim 64, hidden 172, kv width 4·8 = 32; per layer A: 6·8·64 + 8·172, B: (64+32+32+64+172+172)·8 + 64·8.
        long perLayer = (6 * 8 * 64 + 8 * 172) + (64 + 32 + 32 + 64 + 172 + 172 + 64) * 8;
        Assert.Equal(5 * perLayer * 4, d.WeightBytes);
    }
}

/// <summary>Bad adapters for the tiny base, built from a good LoRA (q and v, r = 2) by one change each.</summary>
public static class BadAdapters
{
    private static string Key(int layer, Projection p, string suffix) => TestAdapter.Prefix(layer, p) + "." + suffix;

    public static TestAdapter Tensors(string kind)
    {
        var a = TestAdapter.Lora(r: 2, projections: [Projection.Q, Projection.V]);
        var random = new Random(9);
        string qa0 = Key(0, Projection.Q, "lora_A.weight"), vb1 = Key(1, Projection.V, "lora_B.weight");
        switch (kind)
        {
            case "wrong_shape": a.Replace(qa0, t => t with { Shape = [2, 7], Values = t.Values[..14] }); break;
            case "b_wrong_out": a.Replace(vb1, t => t with { Shape = [5, 2], Values = [.. t.Values, 0f, 0f] }); break;
            case "rank_mismatch": a.Replace(vb1, t => t with { Shape = [4, 3], Values = [.. t.Values, 0f, 0f, 0f, 0f] }); break;
            case "rank_not_config_r":
                a.Replace(qa0, t => t with { Shape = [3, 8], Values = [.. t.Values, .. new float[8]] });
                a.Replace(Key(0, Projection.Q, "lora_B.weight"), t => t with { Shape = [8, 3], Values = [.. t.Values, .. new float[8]] });
                break;
            case "missing_b": a.Remove(Key(0, Projection.Q, "lora_B.weight")); break;
            case "missing_a": a.Remove(Key(1, Projection.V, "lora_A.weight")); break;
            case "unknown_module": a.Add("base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight", [2, 8], random); break;
            case "lm_head": a.Add("base_model.model.lm_head.lora_A.weight", [2, 8], random); break;
            case "layer_out_of_range":
                a.Add(Key(2, Projection.Q, "lora_A.weight").Replace("layers.0", "layers.2"), [2, 8], random);
                break;
            case "huge_layer_index": a.Add("base_model.model.model.layers.99999999999.self_attn.q_proj.lora_A.weight", [2, 8], random); break;
            case "no_prefix": a.Add("model.layers.0.self_attn.q_proj.lora_A.weight", [2, 8], random); break;
            case "unknown_suffix": a.Add(Key(0, Projection.Q, "lora_embedding_A"), [2, 8], random); break;
            case "nan": a.Replace(vb1, t => t with { Values = [.. t.Values[..5], float.NaN, .. t.Values[6..]] }); break;
            case "inf": a.Replace(qa0, t => t with { Values = [.. t.Values[..3], float.NegativeInfinity, .. t.Values[4..]] }); break;
            case "f16_inf": a.Replace(qa0, t => t with { DType = ScalarType.Float16, Values = [.. t.Values[..1], 1e6f, .. t.Values[2..]] }); break;
            case "bf16_nan": a.Replace(vb1, t => t with { DType = ScalarType.BFloat16, Values = [float.NaN, .. t.Values[1..]] }); break;
            case "i32": a.Replace(qa0, t => t with { DType = ScalarType.Int32 }); break;
            case "f64": a.Replace(vb1, t => t with { DType = ScalarType.Float64 }); break;
            case "untargeted":
                a.Add(Key(0, Projection.K, "lora_A.weight"), [2, 8], random).Add(Key(0, Projection.K, "lora_B.weight"), [4, 2], random);
                break;
            case "empty": a.Tensors.Clear(); break;
            default: throw new ArgumentException(kind);
        }
        return a;
    }
}
