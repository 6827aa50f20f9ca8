using System.Globalization;
using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using static TorchSharp.torch;

namespace AdapterServe.Tests.KindSeam;

/// <summary>
/// A throwaway adapter kind that lives in the test project only, to prove the seam: peft_type SCALED_IDENTITY adds a
/// learned per-channel gain on the identity to square projections, <c>ΔW = diag(g)</c>, so <c>y += scale · (x ⊙ g)</c>.
/// Its files are nested, one folder per layer: <c>adapter_config.json</c> (names the projections in
/// <c>target_modules</c>) and <c>gains/layer{i}/gain.safetensors</c> holding <c>{q_proj|o_proj|...} [d]</c>.
/// </summary>
public sealed class ScaledIdentityKind : IAdapterKindHandler
{
    public const string PeftType = "SCALED_IDENTITY";
    public const string GainFile = "gain.safetensors";
    public static readonly AdapterKind Name = new("scaled_identity");

    public IReadOnlyList<string> PeftTypes { get; } = [PeftType];

    public AdapterFiles Files { get; } = new([new(AdapterFiles.ConfigFileName), new($"gains/*/{GainFile}", Required: false)]);

    public static string GainPath(int layer) => $"gains/layer{layer}/{GainFile}";

    public AdapterDescription Describe(string directory, JsonObject config, ModelConfig baseModel, AdapterValidationOptions options)
    {
        var targets = (config["target_modules"] as JsonArray)?.Select(t => t!.GetValue<string>()).ToHashSet()
            ?? throw new AdapterValidationException("adapter_config.json: target_modules must be a list", "invalid_adapter_config");
        var modules = new List<GainModule>();
        long bytes = 0;
        foreach (var relative in Files.Find(directory).Where(f => f.StartsWith("gains/", StringComparison.Ordinal)))
        {
            string folder = relative.Split('/')[1];
            if (!folder.StartsWith("layer", StringComparison.Ordinal) || !int.TryParse(folder[5..], NumberStyles.None, CultureInfo.InvariantCulture, out int layer)
                || layer >= baseModel.NumHiddenLayers)
                throw new AdapterValidationException($"'{relative}': the folder must be layer{{i}} with i below {baseModel.NumHiddenLayers}", "invalid_adapter_weights");
            using var file = AdapterValidator.OpenSafetensors(directory, relative);
            foreach (var entry in file.Tensors.Values.OrderBy(e => e.Name, StringComparer.Ordinal))
            {
                if (!ProjectionNames.TryParseShortName(entry.Name, out var projection) || !targets.Contains(entry.Name))
                    throw new AdapterValidationException($"'{relative}': tensor '{entry.Name}' is not a projection in target_modules", "unknown_tensor");
                var (dIn, dOut) = baseModel.ProjectionShape(projection);
                if (dIn != dOut)
                    throw new AdapterValidationException($"'{relative}': {entry.Name} is [{dOut}, {dIn}], a scaled identity needs a square projection", "shape_mismatch");
                if (entry.Shape is not [var d] || d != dIn)
                    throw new AdapterValidationException($"'{relative}': tensor '{entry.Name}' has shape [{string.Join(", ", entry.Shape)}], expected [{dIn}]", "shape_mismatch");
                modules.Add(new GainModule(layer, projection, relative));
                bytes += entry.End - entry.Begin;
            }
            if (options.ScanWeights) AdapterValidator.RefuseNonFinite(directory, relative, file.Tensors.Values);
        }
        if (modules.Count == 0) throw new AdapterValidationException("the adapter holds no identity gains (gains/layer{i}/gain.safetensors)", "invalid_adapter_weights");
        return new ScaledIdentityDescription(this, [.. modules.OrderBy(m => m.Layer).ThenBy(m => m.Projection)], bytes);
    }

    public IAdapterModules Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype)
    {
        var description = (ScaledIdentityDescription)record.Description;
        using var inferenceOff = inference_mode(false);
        var gains = new Dictionary<(int, Projection), Tensor>();
        foreach (var group in description.Modules.GroupBy(m => m.File))
        {
            using var file = AdapterValidator.OpenSafetensors(record.Directory, group.Key);
            foreach (var m in group)
                gains[(m.Layer, m.Projection)] = file.Read(m.Projection.ShortName(), dtype, device).DetachFromDisposeScope();   // [d]
        }
        return new GainModules(gains);
    }

    public IAdapterStepExecutor CreateStepExecutor(IReadOnlyList<AdapterTokenGroup> groups) => new GainExecutor(groups);

    /// <summary>Writes an adapter directory of this kind: one gain file per layer, the gains as given.</summary>
    public static void Write(string directory, IReadOnlyDictionary<(int Layer, Projection Projection), float[]> gains)
    {
        Directory.CreateDirectory(directory);
        var config = new JsonObject
        {
            ["peft_type"] = PeftType,
            ["target_modules"] = new JsonArray(gains.Keys.Select(k => k.Projection.ShortName()).Distinct().Select(n => (JsonNode)n).ToArray()),
        };
        File.WriteAllText(Path.Combine(directory, AdapterFiles.ConfigFileName), config.ToJsonString());
        foreach (var layer in gains.GroupBy(g => g.Key.Layer))
        {
            string path = Path.Combine(directory, GainPath(layer.Key));
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            SafetensorsWriter.Write(path, layer.Select(g => KeyValuePair.Create(g.Key.Projection.ShortName(), tensor(g.Value))));
        }
    }

    public sealed record GainModule(int Layer, Projection Projection, string File);

    public sealed record ScaledIdentityDescription(ScaledIdentityKind DescribedBy, IReadOnlyList<GainModule> Modules, long WeightBytes) : AdapterDescription(Name, WeightBytes)
    {
        public override IAdapterKindHandler Handler => DescribedBy;
        public override int MaxRank => 0;
        public override IReadOnlyList<string> TargetModules => Modules.Select(m => m.Projection.ShortName()).Distinct().ToList();
        public override IReadOnlyList<AdapterModuleSummary> ModuleSummaries =>
            Modules.Select(m => new AdapterModuleSummary(m.Layer, m.Projection, 0, new Dictionary<string, object> { ["gain_file"] = m.File })).ToList();
    }

    private sealed class GainModules(Dictionary<(int, Projection), Tensor> gains) : IAdapterModules
    {
        public long Bytes { get; } = gains.Values.Sum(g => g.NumberOfElements * g.ElementSize);
        public Tensor? Gain(int layer, Projection projection) => gains.GetValueOrDefault((layer, projection));
        public bool Targets(int layer, Projection projection) => gains.ContainsKey((layer, projection));

        public IAdapterModules To(Device device)
        {
            using var inferenceOff = inference_mode(false);
            return new GainModules(gains.ToDictionary(kv => kv.Key, kv => kv.Value.to(device, copy: true).DetachFromDisposeScope()));
        }

        public void Dispose()
        {
            foreach (var g in gains.Values) g.Dispose();
        }
    }

    private sealed class GainExecutor(IReadOnlyList<AdapterTokenGroup> groups) : IAdapterStepExecutor
    {
        public void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight)
        {
            foreach (var g in groups)
            {
                if (((GainModules)g.Adapter.Modules).Gain(layer, projection) is not { } gain) continue;
                var delta = g.Rows(x).to(gain.dtype).mul(gain);                     // [n_g, d] = x ⊙ g
                if (g.Scale != 1f) delta = TorchScalars.MulInPlace(delta, g.Scale);
                g.AddRows(y, delta.to(y.dtype));
            }
        }

        public void Complete() { }
    }
}
