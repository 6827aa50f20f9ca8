using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using static AdapterServe.Tests.Kronecker.KroneckerTestFiles;

namespace AdapterServe.Tests.Kronecker;

/// <summary>Bad LoKr/MoKA files are refused with a 400 naming the tensor or config field at fault.</summary>
public sealed class KroneckerValidationTests : IDisposable
{
    private static readonly ModelConfig Base = TestAdapter.TinyBase;
    private readonly TempFolder _temp = new();
    private int _count;

    public void Dispose() => _temp.Dispose();

    private KroneckerDescription Describe(TestAdapter adapter)
    {
        var (description, modules) = Load(adapter.WriteTo(_temp.Sub($"v{_count++}")), Base);
        foreach (var m in modules.Values) m.Dispose();
        return description;
    }

    private AdapterValidationException Refused(TestAdapter adapter, params string[] named)
    {
        var e = Assert.Throws<AdapterValidationException>(() => Describe(adapter));
        Assert.Equal(400, e.StatusCode);
        foreach (var n in named) Assert.Contains(n, e.Message);
        return e;
    }

    private static TestAdapter Lokr(FactorForm w2 = FactorForm.Whole) => KroneckerTestFiles.Lokr(Base, [Projection.Q, Projection.Gate], r: 2, w2: w2);

    private static TestAdapter Moka() =>
        KroneckerTestFiles.Moka(Base, [Projection.Q], _ => [new KroneckerShape(2, 2, 4, 4), new KroneckerShape(8, 8, 1, 1)]);

    [Fact]
    public void A_lokr_folder_as_peft_saves_it_is_described_with_its_factor_shapes()
    {
        var d = Describe(Lokr(FactorForm.LowRank));
        Assert.Equal(AdapterKind.Lokr, d.Kind);
        Assert.Equal(["q_proj", "gate_proj"], d.TargetModules);
        Assert.All(d.Modules, m => Assert.Equal(2, m.W2Rank));
        Assert.Equal(new KroneckerShape(2, 2, 4, 4), d.Modules[0].Components[0]);
    }

    [Fact]
    public void Factor_products_that_do_not_equal_the_layer_shape_are_refused_naming_both_factors()
    {
        var adapter = Lokr();
        adapter.Replace(Prefix(0, Projection.Gate) + ".lokr_w1", t => t with { Shape = [2, 2], Values = new float[4] });
        var e = Refused(adapter, Prefix(0, Projection.Gate) + ".lokr_w1", Prefix(0, Projection.Gate) + ".lokr_w2", "[12, 8]");
        Assert.Equal("shape_mismatch", e.Code);
    }

    [Fact]
    public void A_missing_factor_is_refused_naming_it()
    {
        var adapter = Lokr(FactorForm.LowRank).Remove(Prefix(1, Projection.Q) + ".lokr_w2_b");
        Assert.Equal("missing_tensor", Refused(adapter, Prefix(1, Projection.Q) + ".lokr_w2_b").Code);
        var whole = Lokr().Remove(Prefix(0, Projection.Q) + ".lokr_w1");
        Assert.Equal("missing_tensor", Refused(whole, Prefix(0, Projection.Q) + ".lokr_w1").Code);
    }

    [Fact]
    public void A_low_rank_factor_whose_rank_is_not_r_is_refused()
    {
        var adapter = Lokr(FactorForm.LowRank);
        adapter.Config["r"] = 3;
        Assert.Equal("rank_mismatch", Refused(adapter, "lokr_w2_a", "r = 3").Code);
    }

    [Fact]
    public void Use_effective_conv2d_and_tucker_cores_are_refused()
    {
        var conv = Lokr();
        conv.Config["use_effective_conv2d"] = true;
        Refused(conv, "use_effective_conv2d");

        var tucker = Lokr(FactorForm.LowRank);
        tucker.Add(Prefix(0, Projection.Q) + ".lokr_t2", [2, 2, 1, 1], new Random(3));
        Refused(tucker, Prefix(0, Projection.Q) + ".lokr_t2");
    }

    [Fact]
    public void Training_only_fields_are_accepted_and_ignored()
    {
        var adapter = Lokr();
        adapter.Config["rank_dropout"] = 0.3;
        adapter.Config["module_dropout"] = 0.1;
        adapter.Config["init_weights"] = "lycoris";
        adapter.Config["rank_dropout_scale"] = true;
        Assert.Equal(4, Describe(adapter).Modules.Count);
    }

    [Fact]
    public void Unknown_modules_and_untargeted_modules_are_refused()
    {
        var untargeted = Lokr();
        untargeted.Config["target_modules"] = new JsonArray("q_proj");
        Refused(untargeted, "model.layers.0.mlp.gate_proj", "does not target");

        var stranger = Lokr();
        stranger.Add("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", [2, 8], new Random(1));
        Refused(stranger, "lora_A.weight");
    }

    [Fact]
    public void A_moka_gate_of_the_wrong_length_is_refused_naming_it()
    {
        var adapter = Moka().Replace(Prefix(1, Projection.Q) + ".moka_gate", t => t with { Shape = [3], Values = new float[3] });
        Assert.Equal("shape_mismatch", Refused(adapter, Prefix(1, Projection.Q) + ".moka_gate", "2").Code);
    }

    [Fact]
    public void A_moka_component_that_does_not_cover_the_layer_is_refused_naming_the_field()
    {
        var adapter = Moka();
        adapter.Config["components"] = Json([new KroneckerShape(2, 2, 4, 4), new KroneckerShape(4, 8, 1, 1)]);
        Refused(adapter, "components[1]", "[4, 8, 1, 1]");
    }

    [Fact]
    public void Missing_or_extra_moka_components_are_refused_naming_the_tensor()
    {
        Refused(Moka().Remove(Prefix(0, Projection.Q) + ".moka_B.1"), Prefix(0, Projection.Q) + ".moka_B.1");
        var extra = Moka();
        extra.Add(Prefix(0, Projection.Q) + ".moka_A.2", [2, 2], new Random(1));
        Refused(extra, Prefix(0, Projection.Q) + ".moka_A.2", "2 components");
    }

    [Fact]
    public void A_moka_config_without_components_is_refused()
    {
        var adapter = Moka();
        adapter.Config.Remove("components");
        Refused(adapter, "components");
    }
}
