using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Adapters.Kinds.Omoe;
using AdapterServe.Adapters.Store;
using AdapterServe.Bench.Adapters;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Mixtures;

/// <summary>Mixture directories written by the bench writers, then broken one way at a time.</summary>
public class MixtureValidationTests : IDisposable
{
    static readonly ModelConfig Base = AdapterServe.Tests.AdapterStore.TestAdapter.TinyBase;
    static readonly Projection[] Targets = [Projection.Q, Projection.V, Projection.Down];
    readonly string _root = Path.Combine(Path.GetTempPath(), "adapterserve-tests", "mixtures", Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
    }

    string Mixer(int experts = 4, int topK = 2, IReadOnlyList<string>? registered = null)
    {
        string dir = Path.Combine(_root, Guid.NewGuid().ToString("N"));
        MixtureWriters.WriteLoraMixer(dir, Base, experts, topK, rank: 2, Targets, seed: 3, expertNames: registered);
        return dir;
    }

    string Omoe(int experts = 3)
    {
        string dir = Path.Combine(_root, Guid.NewGuid().ToString("N"));
        MixtureWriters.WriteOmoe(dir, Base, experts, rank: 2, Targets, seed: 4);
        return dir;
    }

    static AdapterRecord? NoneRegistered(string name) => null;

    static void EditConfig(string dir, Action<JsonObject> edit)
    {
        string path = Path.Combine(dir, "adapter_config.json");
        var o = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(o);
        File.WriteAllText(path, o.ToJsonString());
    }

    /// <summary>Rewrites a safetensors file, replacing (or with null, dropping) tensors by name.</summary>
    static void EditTensors(string path, Func<string, Tensor, Tensor?> edit)
    {
        var kept = new List<KeyValuePair<string, Tensor>>();
        using (var file = SafetensorsFile.Open(path))
            foreach (var name in file.Tensors.Keys.Order(StringComparer.Ordinal))
                if (edit(name, file.Read(name, ScalarType.Float32, CPU)) is { } t) kept.Add(new(name, t));
        SafetensorsWriter.Write(path, kept);
    }

    static AdapterValidationException Refused(Action validate) => Assert.Throws<AdapterValidationException>(validate);

    [Fact]
    public void A_mixer_with_embedded_experts_is_described_with_one_router_per_adapted_module()
    {
        var layout = LoraMixerValidator.Validate(Mixer(), Base, NoneRegistered);
        Assert.Equal(["expert-0", "expert-1", "expert-2", "expert-3"], layout.Experts.Select(e => e.Name));
        Assert.All(layout.Experts, e => Assert.True(e.Embedded));
        Assert.Equal(2, layout.Config.TopK);
        Assert.Equal(Base.NumHiddenLayers * Targets.Length, layout.Routers.Count);
        Assert.All(layout.Routers, r => Assert.True(r.HasBias));
    }

    [Fact]
    public void A_mixer_over_registered_loras_takes_their_descriptions_from_the_registry()
    {
        string expertDir = Path.Combine(_root, "zara");
        PeftLoraWriter.Write(expertDir, Base, 2, Targets, seed: 1);
        var zara = new AdapterRecord("zara", 1, expertDir, AdapterValidator.Validate(expertDir, Base), "hash", "test", DateTimeOffset.UnixEpoch, DateTimeOffset.UnixEpoch);
        var layout = LoraMixerValidator.Validate(Mixer(registered: ["zara", "zara2"]), Base, n => n.StartsWith("zara") ? zara : null);
        Assert.All(layout.Experts, e => Assert.False(e.Embedded));
    }

    [Fact]
    public void A_mixer_naming_an_expert_that_is_neither_registered_nor_embedded_is_refused_naming_it()
    {
        var e = Refused(() => LoraMixerValidator.Validate(Mixer(registered: ["ghost", "zara"]), Base, NoneRegistered));
        Assert.Equal(400, e.StatusCode);
        Assert.Equal("expert_not_found", e.Code);
        Assert.Contains("'ghost'", e.Message);
    }

    [Fact]
    public void An_embedded_expert_written_for_another_base_is_refused_naming_the_expert_and_the_tensor()
    {
        string dir = Mixer();
        var other = Base with { HiddenSize = 12, HeadDim = 6 };
        string expert = Path.Combine(dir, "experts", "expert-1");
        Directory.Delete(expert, recursive: true);
        PeftLoraWriter.Write(expert, other, 2, Targets, seed: 9);
        var e = Refused(() => LoraMixerValidator.Validate(dir, Base, NoneRegistered));
        Assert.Contains("expert 'expert-1'", e.Message);
        Assert.Contains("lora_A.weight", e.Message);
        Assert.Equal("shape_mismatch", e.Code);
    }

    [Fact]
    public void A_router_whose_shape_does_not_match_the_experts_or_the_base_is_refused_naming_the_tensor()
    {
        string dir = Mixer();
        string path = Path.Combine(dir, "mixer_model.safetensors");
        string victim = "base_model.model.model.layers.1.self_attn.v_proj.router.weight";
        EditTensors(path, (name, t) => name == victim ? randn(5, Base.HiddenSize) : t);
        var e = Refused(() => LoraMixerValidator.Validate(dir, Base, NoneRegistered));
        Assert.Contains(victim, e.Message);
        Assert.Equal("shape_mismatch", e.Code);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    [InlineData(-1)]
    public void A_mixer_top_k_outside_one_to_the_number_of_experts_is_refused_naming_the_field(int topK)
    {
        string dir = Mixer();
        EditConfig(dir, o => o["top_k"] = topK);
        var e = Refused(() => LoraMixerValidator.Validate(dir, Base, NoneRegistered));
        Assert.Contains("'top_k'", e.Message);
        Assert.Equal(400, e.StatusCode);
    }

    [Fact]
    public void A_router_holding_nan_or_inf_is_refused_naming_the_tensor()
    {
        string dir = Mixer();
        string victim = "base_model.model.model.layers.0.mlp.down_proj.router.bias";
        EditTensors(Path.Combine(dir, "mixer_model.safetensors"), (name, t) =>
        {
            if (name != victim) return t;
            var bad = t.clone();
            bad[2] = tensor(float.NaN);
            return bad;
        });
        var e = Refused(() => LoraMixerValidator.Validate(dir, Base, NoneRegistered));
        Assert.Contains(victim, e.Message);
        Assert.Contains("NaN", e.Message);
    }

    [Fact]
    public void Unknown_fields_and_unknown_router_tensors_are_refused_naming_them()
    {
        string dir = Mixer();
        EditConfig(dir, o => o["temperature"] = 0.5);
        Assert.Contains("'temperature'", Refused(() => LoraMixerValidator.Validate(dir, Base, NoneRegistered)).Message);

        string dir2 = Mixer();
        EditTensors(Path.Combine(dir2, "mixer_model.safetensors"), (name, t) => t);
        var extra = new List<KeyValuePair<string, Tensor>>();
        using (var f = SafetensorsFile.Open(Path.Combine(dir2, "mixer_model.safetensors")))
            foreach (var n in f.Tensors.Keys) extra.Add(new(n, f.Read(n, ScalarType.Float32, CPU)));
        extra.Add(new("base_model.model.model.layers.0.self_attn.q_proj.router.noise", zeros(4)));
        SafetensorsWriter.Write(Path.Combine(dir2, "mixer_model.safetensors"), extra);
        Assert.Contains("router.noise", Refused(() => LoraMixerValidator.Validate(dir2, Base, NoneRegistered)).Message);
    }

    [Fact]
    public void A_dora_expert_is_refused()
    {
        string dir = Mixer();
        EditConfig(Path.Combine(dir, "experts", "expert-2"), o => o["use_dora"] = true);
        var magnitudes = new List<KeyValuePair<string, Tensor>>();
        string weights = Path.Combine(dir, "experts", "expert-2", "adapter_model.safetensors");
        using (var f = SafetensorsFile.Open(weights))
            foreach (var n in f.Tensors.Keys)
            {
                magnitudes.Add(new(n, f.Read(n, ScalarType.Float32, CPU)));
                if (n.EndsWith(".lora_B.weight")) magnitudes.Add(new(n.Replace(".lora_B.weight", ".lora_magnitude_vector"), ones(f.Tensors[n].Shape[0])));
            }
        SafetensorsWriter.Write(weights, magnitudes);
        var e = Refused(() => LoraMixerValidator.Validate(dir, Base, NoneRegistered));
        Assert.Contains("expert 'expert-2'", e.Message);
        Assert.Contains("dora", e.Message);
    }

    [Fact]
    public void An_omoe_directory_is_described_with_its_config_and_modules()
    {
        var layout = OmoeValidator.Validate(Omoe(), Base);
        Assert.Equal(3, layout.Config.NumExperts);
        Assert.Equal(2.0, layout.Config.Scaling);
        Assert.True(layout.Config.RescaleNorm);
        Assert.Null(layout.Config.TopK);
        Assert.Equal(Base.NumHiddenLayers * Targets.Length, layout.Modules.Count);
    }

    [Fact]
    public void An_omoe_missing_one_experts_b_is_refused_naming_the_tensor()
    {
        string dir = Omoe();
        string victim = "base_model.model.model.layers.1.mlp.down_proj.omoe_B.2";
        EditTensors(Path.Combine(dir, "adapter_model.safetensors"), (name, t) => name == victim ? null : t);
        var e = Refused(() => OmoeValidator.Validate(dir, Base));
        Assert.Contains(victim, e.Message);
        Assert.Equal("missing_tensor", e.Code);
    }

    [Fact]
    public void An_omoe_expert_with_the_wrong_shape_for_the_base_is_refused_naming_the_tensor()
    {
        string dir = Omoe();
        string victim = "base_model.model.model.layers.0.self_attn.v_proj.omoe_A.1";
        EditTensors(Path.Combine(dir, "adapter_model.safetensors"), (name, t) => name == victim ? randn(2, Base.HiddenSize + 1) : t);
        var e = Refused(() => OmoeValidator.Validate(dir, Base));
        Assert.Contains(victim, e.Message);
        Assert.Equal("shape_mismatch", e.Code);
    }

    [Theory]
    [InlineData("top_k", 4)]
    [InlineData("top_k", 0)]
    [InlineData("rescale", "sqrt")]
    [InlineData("num_experts", 0)]
    [InlineData("use_rslora", true)]
    public void Bad_omoe_config_fields_are_refused_naming_them(string field, object value)
    {
        string dir = Omoe();
        EditConfig(dir, o => o[field] = JsonValue.Create(value));
        var e = Refused(() => OmoeValidator.Validate(dir, Base));
        Assert.Contains($"'{field}'", e.Message);
        Assert.Equal(400, e.StatusCode);
    }

    [Fact]
    public void An_omoe_weight_holding_inf_is_refused_naming_the_tensor()
    {
        string dir = Omoe();
        string victim = "base_model.model.model.layers.0.self_attn.q_proj.omoe_router.weight";
        EditTensors(Path.Combine(dir, "adapter_model.safetensors"), (name, t) =>
        {
            if (name != victim) return t;
            var bad = t.clone();
            bad[1, 3] = tensor(float.PositiveInfinity);
            return bad;
        });
        var e = Refused(() => OmoeValidator.Validate(dir, Base));
        Assert.Contains(victim, e.Message);
        Assert.Contains("Inf", e.Message);
    }
}
