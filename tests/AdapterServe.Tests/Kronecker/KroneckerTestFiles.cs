using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using AdapterServe.Tests.AdapterStore;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Kronecker;

/// <summary>How a test LoKr stores one factor: whole, or low-rank (<c>_a</c>·<c>_b</c>) with the module's r.</summary>
public enum FactorForm { Whole, LowRank }

/// <summary>LoKr and MoKA adapters written by the tests (PEFT key names, the real safetensors writer).</summary>
public static class KroneckerTestFiles
{
    public static string Prefix(int layer, Projection p) => TestAdapter.Prefix(layer, p);

    /// <summary>
    /// A PEFT LoKr adapter on every layer of <paramref name="projections"/>: factors shaped by PEFT's factorization of
    /// <paramref name="baseModel"/>'s layers (or by <paramref name="shapeOf"/>), each stored whole or low-rank with r.
    /// </summary>
    public static TestAdapter Lokr(ModelConfig baseModel, Projection[] projections, int r = 2, double alpha = 4,
        FactorForm w1 = FactorForm.Whole, FactorForm w2 = FactorForm.Whole, int seed = 1,
        Func<int, Projection, KroneckerShape>? shapeOf = null, Func<int, Projection, int>? rankOf = null, float magnitude = 1f)
    {
        var adapter = new TestAdapter
        {
            Config = new JsonObject
            {
                ["peft_type"] = "LOKR", ["task_type"] = "CAUSAL_LM", ["r"] = r, ["alpha"] = alpha,
                ["target_modules"] = new JsonArray(projections.Select(p => (JsonNode)p.ShortName()).ToArray()),
                ["rank_dropout"] = 0.0, ["module_dropout"] = 0.0, ["init_weights"] = true, ["use_effective_conv2d"] = false,
                ["decompose_both"] = w1 == FactorForm.LowRank, ["decompose_factor"] = -1, ["inference_mode"] = true,
                ["modules_to_save"] = null, ["rank_pattern"] = new JsonObject(), ["alpha_pattern"] = new JsonObject(),
            },
        };
        var random = new Random(seed);
        for (int layer = 0; layer < baseModel.NumHiddenLayers; layer++)
            foreach (var p in projections)
            {
                var (dIn, dOut) = baseModel.ProjectionShape(p);
                var s = shapeOf?.Invoke(layer, p) ?? LokrFactorization.Layout(dOut, dIn, r).Shape;
                int rank = rankOf?.Invoke(layer, p) ?? r;
                string prefix = Prefix(layer, p);
                AddFactor(adapter, $"{prefix}.lokr_w1", w1, s.Ma, s.Na, rank, random, magnitude);
                AddFactor(adapter, $"{prefix}.lokr_w2", w2, s.Mb, s.Nb, rank, random, magnitude);
            }
        return adapter;
    }

    /// <summary>A MoKA adapter: <paramref name="components"/> on every targeted module (written as <c>components</c>).</summary>
    public static TestAdapter Moka(ModelConfig baseModel, Projection[] projections, Func<Projection, KroneckerShape[]> components,
        double scaling = 1.0, int seed = 1, float magnitude = 1f, bool asPattern = false)
    {
        var adapter = new TestAdapter
        {
            Config = new JsonObject
            {
                ["peft_type"] = "MOKA",
                ["target_modules"] = new JsonArray(projections.Select(p => (JsonNode)p.ShortName()).ToArray()),
                ["scaling"] = scaling,
            },
        };
        if (asPattern || projections.Select(p => string.Join(";", components(p))).Distinct().Count() > 1)
            adapter.Config["component_pattern"] = new JsonObject(projections.Select(p => KeyValuePair.Create(p.ShortName(), (JsonNode?)Json(components(p)))));
        else
            adapter.Config["components"] = Json(components(projections[0]));

        var random = new Random(seed);
        for (int layer = 0; layer < baseModel.NumHiddenLayers; layer++)
            foreach (var p in projections)
            {
                string prefix = Prefix(layer, p);
                var list = components(p);
                for (int i = 0; i < list.Length; i++)
                {
                    Add(adapter, $"{prefix}.moka_A.{i}", [list[i].Ma, list[i].Na], random, magnitude);
                    Add(adapter, $"{prefix}.moka_B.{i}", [list[i].Mb, list[i].Nb], random, magnitude);
                }
                Add(adapter, $"{prefix}.moka_gate", [list.Length], random, 2f);
            }
        return adapter;
    }

    public static JsonArray Json(IEnumerable<KroneckerShape> shapes) =>
        new(shapes.Select(s => (JsonNode)new JsonArray(s.Ma, s.Na, s.Mb, s.Nb)).ToArray());

    /// <summary>The tensor stored under <paramref name="name"/>, as float32 on the CPU.</summary>
    public static Tensor Stored(TestAdapter adapter, string name)
    {
        var t = adapter.Tensors.Single(x => x.Name == name);
        return tensor(t.Values, t.Shape);
    }

    public static bool Has(TestAdapter adapter, string name) => adapter.Tensors.Any(t => t.Name == name);

    /// <summary>Validates and loads every module of a written adapter directory through the kind's own code (no store).</summary>
    public static (KroneckerDescription Description, Dictionary<(int, Projection), KroneckerWeights> Modules) Load(
        string directory, ModelConfig baseModel, ScalarType dtype = ScalarType.Float32)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(directory, "adapter_config.json")))!.AsObject();
        using var file = SafetensorsFile.Open(Path.Combine(directory, "adapter_model.safetensors"));
        var description = KroneckerValidator.Describe(config, file.Tensors.Values, baseModel);
        var modules = new Dictionary<(int, Projection), KroneckerWeights>();
        foreach (var spec in description.Modules)
            modules[(spec.Layer, spec.Projection)] = KroneckerLoading.LoadModule(description.IsMoka, spec,
                key => file.Tensors.ContainsKey(key) ? file.Read(key, ScalarType.Float32, CPU) : null, CPU, dtype);
        return (description, modules);
    }

    private static void AddFactor(TestAdapter adapter, string name, FactorForm form, int rows, int cols, int rank, Random random, float magnitude)
    {
        if (form == FactorForm.Whole) Add(adapter, name, [rows, cols], random, magnitude);
        else
        {
            Add(adapter, name + "_a", [rows, rank], random, magnitude);
            Add(adapter, name + "_b", [rank, cols], random, magnitude);
        }
    }

    private static void Add(TestAdapter adapter, string name, long[] shape, Random random, float magnitude)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        adapter.Tensors.Add(new TestTensor(name, shape, Enumerable.Range(0, (int)n).Select(_ => magnitude * (float)(random.NextDouble() - 0.5)).ToArray()));
    }
}
