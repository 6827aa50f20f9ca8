using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using AdapterServe.Tests.Safetensors;
using static TorchSharp.torch;

using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.AdapterMath;

/// <summary>The real PEFT adapters of ../shared/models on stories260K-hf, loaded from their directories.</summary>
public class RealAdapterTests
{
    [Theory]
    [InlineData("zara")]
    [InlineData("forest")]
    public void Real_adapter_output_equals_merged_weight_output_on_every_module(string name)
    {
        var models = SharedModels.Root;
        if (models is null) Assert.Skip("../shared/models not found: the real adapter files are not available here");
        using var scope = NewDisposeScope();
        var adapterDir = Path.Combine(models, "adapters", name);
        using var baseFile = SafetensorsFile.Open(Path.Combine(models, "stories260K-hf", "model.safetensors"));
        using var adapterFile = SafetensorsFile.Open(Path.Combine(adapterDir, LoadedAdapter.WeightsFileName));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json")))!;
        double alpha = config["lora_alpha"]!.GetValue<double>();

        // The description the validator would produce, built by hand from the file's keys: one module per lora_A.
        var modules = new List<AdapterModuleSpec>();
        foreach (var key in adapterFile.Tensors.Keys.Where(k => k.EndsWith(".lora_A.weight")).Order())
        {
            string prefix = key[..^".lora_A.weight".Length];                           // base_model.model.model.layers.{i}.{block}.{proj}
            var parts = prefix.Split('.');
            int layer = int.Parse(parts[4]);
            Assert.True(ProjectionNames.TryParseShortName(parts[^1], out var p), key);
            int rank = (int)adapterFile.Tensors[key].Shape[0];
            modules.Add(new AdapterModuleSpec(layer, p, rank, alpha / rank, false, false, false, prefix));
        }
        Assert.Equal(5 * 7, modules.Count);
        var description = new LoraDescription(AdapterKind.Lora, modules, false, "peft", new FileInfo(Path.Combine(adapterDir, LoadedAdapter.WeightsFileName)).Length);
        var record = new AdapterRecord(name, 1, adapterDir, description, "sha256:real", "shared", DateTimeOffset.UnixEpoch, DateTimeOffset.UnixEpoch);

        var weights = new Dictionary<(int, Projection), Tensor>();
        Tensor BaseWeight(int layer, Projection p) =>
            weights.TryGetValue((layer, p), out var w) ? w : weights[(layer, p)] = baseFile.Read(ProjectionNames.ModulePath(layer, p) + ".weight");
        using var adapter = LoadedAdapter.Load(record, new FuncBaseWeights(BaseWeight), CPU, ScalarType.Float32);
        using var batch = new AdapterBatch([AdapterSegment.Single(0, 4, adapter)]);

        var random = new Generator(3, CPU);
        foreach (var spec in modules)
        {
            var w0 = BaseWeight(spec.Layer, spec.Projection);                               // [d_out, d_in]
            var a = adapterFile.Read(spec.TensorPrefix + ".lora_A.weight");
            var b = adapterFile.Read(spec.TensorPrefix + ".lora_B.weight");
            var x = randn([4, w0.shape[1]], generator: random);                             // [4, d_in]
            var expected = Reference.Linear(x, Reference.MergedLora(w0, a, b, alpha / spec.Rank));
            Reference.AssertClose(expected, batch.Apply(spec.Layer, spec.Projection, x, Reference.Linear(x, w0), w0), what: spec.TensorPrefix);
        }
        Assert.Equal(adapterFile.Tensors.Values.Sum(t => t.End - t.Begin), adapter.Bytes);
    }
}
