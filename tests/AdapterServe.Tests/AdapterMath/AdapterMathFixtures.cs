using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.AdapterMath;

/// <summary>
/// A tiny frozen "base model" for adapter tests: random float32 weights for a few projections of two layers, shaped so
/// that every case occurs: square (q), d_out &lt; d_in (v), d_out &gt; d_in (up), d_in &gt; d_out by a lot (down).
/// </summary>
sealed class TestBase : IBaseWeights
{
    public static readonly IReadOnlyDictionary<Projection, (int Out, int In)> Shapes = new Dictionary<Projection, (int, int)>
    {
        [Projection.Q] = (16, 16),
        [Projection.V] = (8, 16),
        [Projection.Up] = (40, 16),
        [Projection.Down] = (16, 40),
    };

    readonly Dictionary<(int, Projection), Tensor> _weights = [];
    readonly Generator _random;

    public TestBase(int seed = 7)
    {
        _random = new Generator((ulong)seed);
        foreach (var layer in new[] { 0, 1 })
            foreach (var (p, (dOut, dIn)) in Shapes)
                _weights[(layer, p)] = randn([dOut, dIn], generator: _random).mul(0.2).DetachFromDisposeScope(); // [d_out, d_in]
    }

    /// <summary>W0 <c>[d_out, d_in]</c>.</summary>
    public Tensor Weight(int layer, Projection p) => _weights[(layer, p)];

    /// <summary>A random activation batch <c>[n, d_in]</c> for <paramref name="p"/>.</summary>
    public Tensor Input(Projection p, int n) => randn([n, Shapes[p].In], generator: _random);
}

/// <summary>Base weights served by a function (a checkpoint read on demand).</summary>
sealed class FuncBaseWeights(Func<int, Projection, Tensor> weight) : IBaseWeights
{
    public Tensor Weight(int layer, Projection projection) => weight(layer, projection);
}

/// <summary>Builds a PEFT-named adapter (tensors keyed like adapter_model.safetensors) and its description by hand.</summary>
sealed class TestAdapter(string name, int version = 1, int seed = 1)
{
    readonly Dictionary<string, Tensor> _tensors = [];
    readonly List<AdapterModuleSpec> _modules = [];
    readonly Generator _random = new((ulong)seed);

    public string Name => name;
    public int Version => version;
    public AdapterKind Kind { get; set; } = AdapterKind.Lora;
    public bool FanInFanOut { get; set; }
    public string KasaTruncation { get; set; } = "peft";
    public string Directory { get; set; } = "/nonexistent";

    public IReadOnlyDictionary<string, Tensor> Tensors => _tensors;

    public static string Prefix(int layer, Projection p) => "base_model.model." + ProjectionNames.ModulePath(layer, p);

    public TestAdapter Module(int layer, Projection p, int rank, double scaling, bool bias = false, bool dora = false, bool kasa = false)
    {
        var (dOut, dIn) = TestBase.Shapes[p];
        string prefix = Prefix(layer, p);
        _tensors[prefix + ".lora_A.weight"] = Keep(randn([rank, dIn], generator: _random).mul(0.3));   // [r, d_in]
        _tensors[prefix + ".lora_B.weight"] = Keep(randn([dOut, rank], generator: _random).mul(0.3));  // [d_out, r]
        if (bias) _tensors[prefix + ".lora_B.bias"] = Keep(randn([dOut], generator: _random).mul(0.1));
        if (dora) _tensors[prefix + ".lora_magnitude_vector"] = Keep(rand([dOut], generator: _random).add(0.5));
        if (kasa) _tensors[prefix + ".lora_diag"] = Keep(randn([rank], generator: _random));
        _modules.Add(new AdapterModuleSpec(layer, p, rank, scaling, bias, dora, kasa, prefix));
        return this;
    }

    public Tensor A(int layer, Projection p) => _tensors[Prefix(layer, p) + ".lora_A.weight"];
    public Tensor B(int layer, Projection p) => _tensors[Prefix(layer, p) + ".lora_B.weight"];
    public Tensor Bias(int layer, Projection p) => _tensors[Prefix(layer, p) + ".lora_B.bias"];
    public Tensor Magnitude(int layer, Projection p) => _tensors[Prefix(layer, p) + ".lora_magnitude_vector"];
    public Tensor Diag(int layer, Projection p) => _tensors[Prefix(layer, p) + ".lora_diag"];
    public AdapterModuleSpec Spec(int layer, Projection p) => _modules.Single(m => m.Layer == layer && m.Projection == p);
    public bool Targets(int layer, Projection p) => _modules.Any(m => m.Layer == layer && m.Projection == p);

    public AdapterRecord Record()
    {
        var description = new LoraDescription(Kind, _modules.ToList(), FanInFanOut, KasaTruncation,
            _tensors.Values.Sum(t => t.NumberOfElements * t.ElementSize));
        var now = DateTimeOffset.UnixEpoch;
        return new AdapterRecord(name, version, Directory, description, $"sha256:test-{name}-{version}", "test", now, now);
    }

    /// <summary>Loads straight from the in-memory tensors (no file).</summary>
    public LoadedAdapter Load(TestBase model, ScalarType dtype = ScalarType.Float32) =>
        LoraKind.FromTensors(Record(), key => _tensors.GetValueOrDefault(key), model, CPU, dtype);

    /// <summary>Writes a PEFT directory (adapter_config.json + adapter_model.safetensors) and points the record at it.</summary>
    public void WriteDirectory(string directory, int r, double alpha)
    {
        System.IO.Directory.CreateDirectory(directory);
        SafetensorsWriter.Write(Path.Combine(directory, LoadedAdapter.WeightsFileName), _tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var config = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["r"] = r,
            ["lora_alpha"] = alpha,
            ["target_modules"] = new JsonArray(_modules.Select(m => (JsonNode)m.Projection.ShortName()).Distinct().ToArray()),
            ["fan_in_fan_out"] = FanInFanOut,
            ["use_dora"] = Kind == AdapterKind.Dora,
        };
        File.WriteAllText(Path.Combine(directory, "adapter_config.json"), config.ToJsonString());
        Directory = directory;
    }

    static Tensor Keep(Tensor t) => t.DetachFromDisposeScope();
}

/// <summary>Independent reference maths: materialised weights, plain matmuls.</summary>
static class Reference
{
    /// <summary><c>x @ Wᵀ</c>.</summary>
    public static Tensor Linear(Tensor x, Tensor w) => x.matmul(w.t());

    /// <summary>PEFT's merged LoRA weight <c>W0 + s·B·A</c>.</summary>
    public static Tensor MergedLora(Tensor w0, Tensor a, Tensor b, double s) => w0 + b.matmul(a) * s;

    /// <summary>DoRA's merged weight <c>(m / ‖W'‖_row) ⊙_row W'</c>, the row norm spelled out.</summary>
    public static Tensor MergedDora(Tensor merged, Tensor magnitude)
    {
        var rowNorm = merged.pow(2).sum(1).sqrt();                    // [d_out]
        return merged * (magnitude / rowNorm).unsqueeze(1);           // [d_out, d_in]
    }

    /// <summary>W0 without its smallest singular triplets: <c>U[:, :kept] diag(S[:kept]) Vh[:kept]</c> from a full SVD.</summary>
    public static Tensor WorldWeight(Tensor w0, int kept)
    {
        var (u, s, vh) = linalg.svd(w0, fullMatrices: true);                 // [d_out, d_out], [k], [d_in, d_in]
        var world = zeros_like(w0);
        for (int i = 0; i < kept; i++)                                       // Σ_i s_i · u_i v_iᵀ over the kept components
            world += u.select(1, i).unsqueeze(1).matmul(vh.select(0, i).unsqueeze(0)) * s[i].item<float>();
        return world;
    }

    public static void AssertClose(Tensor expected, Tensor actual, double tolerance = 1e-5, string? what = null)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var scope = NewDisposeScope();
        var diff = (actual.to(ScalarType.Float32) - expected.to(ScalarType.Float32)).abs();
        var bound = expected.to(ScalarType.Float32).abs() * tolerance + tolerance;
        bool ok = (diff <= bound).all().item<bool>();
        Assert.True(ok, $"{what ?? "output"}: max |diff| = {diff.max().item<float>():E3} exceeds {tolerance:E0} (rel+abs)");
    }
}
