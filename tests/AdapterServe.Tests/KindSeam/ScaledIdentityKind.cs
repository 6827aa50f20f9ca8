using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.KindSeam;

/// <summary>
/// A throwaway adapter kind that lives in the test project only, to prove the seam: peft_type SCALED_IDENTITY adds a
/// learned per-channel gain on the identity to square projections, <c>ΔW = diag(g)</c>, so <c>y += scale · (x ⊙ g)</c>.
/// Its config names the projections (<c>target_modules</c>); <c>adapter_model.safetensors</c> holds
/// <c>base_model.model.{module}.identity_gain [d]</c> per adapted module.
/// </summary>
public sealed class ScaledIdentityKind : IAdapterKindHandler
{
    public const string PeftType = "SCALED_IDENTITY";
    public const string Suffix = ".identity_gain";
    public static readonly AdapterKind Name = new("scaled_identity");

    public IReadOnlyList<string> PeftTypes { get; } = [PeftType];

    public AdapterFiles Files => AdapterFiles.Peft;

    public AdapterDescription Describe(string directory, JsonObject config, ModelConfig baseModel, AdapterValidationOptions options)
    {
        var targets = (config["target_modules"] as JsonArray)?.Select(t => t!.GetValue<string>()).ToHashSet()
            ?? throw new AdapterValidationException("adapter_config.json: target_modules must be a list", "invalid_adapter_config");
        using var file = AdapterValidator.OpenSafetensors(directory, AdapterFiles.WeightsFileName);
        var modules = new List<GainModule>();
        foreach (var entry in file.Tensors.Values.OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            var (layer, projection) = ParseKey(entry.Name, baseModel);
            if (!targets.Contains(projection.ShortName()))
                throw new AdapterValidationException($"tensor '{entry.Name}': {projection.ShortName()} is not in target_modules", "invalid_adapter_weights");
            var (dIn, dOut) = baseModel.ProjectionShape(projection);
            if (dIn != dOut)
                throw new AdapterValidationException($"tensor '{entry.Name}': {projection.ShortName()} is [{dOut}, {dIn}], a scaled identity needs a square projection", "shape_mismatch");
            if (entry.Shape is not [var d] || d != dIn)
                throw new AdapterValidationException($"tensor '{entry.Name}' has shape [{string.Join(", ", entry.Shape)}], expected [{dIn}]", "shape_mismatch");
            modules.Add(new GainModule(layer, projection, entry.Name));
        }
        if (modules.Count == 0) throw new AdapterValidationException("adapter_model.safetensors holds no identity gains", "invalid_adapter_weights");
        if (options.ScanWeights) AdapterValidator.RefuseNonFinite(directory, AdapterFiles.WeightsFileName, file.Tensors.Values);
        return new ScaledIdentityDescription(this, [.. modules.OrderBy(m => m.Layer).ThenBy(m => m.Projection)], file.Tensors.Values.Sum(e => e.End - e.Begin));
    }

    public IAdapterModules Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype)
    {
        var description = (ScaledIdentityDescription)record.Description;
        using var file = AdapterValidator.OpenSafetensors(record.Directory, AdapterFiles.WeightsFileName);
        using var inferenceOff = inference_mode(false);
        var gains = new Dictionary<(int, Projection), Tensor>();
        foreach (var m in description.Modules)
            gains[(m.Layer, m.Projection)] = file.Read(m.Key, dtype, device).DetachFromDisposeScope();   // [d]
        return new GainModules(gains);
    }

    public IAdapterStepExecutor CreateStepExecutor(IReadOnlyList<AdapterTokenGroup> groups) => new GainExecutor(groups);

    private static (int Layer, Projection Projection) ParseKey(string key, ModelConfig baseModel)
    {
        // base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.identity_gain
        var parts = key.Split('.');
        if (!key.StartsWith(AdapterValidator.KeyPrefix, StringComparison.Ordinal) || !key.EndsWith(Suffix, StringComparison.Ordinal) || parts.Length != 8
            || !int.TryParse(parts[4], out int layer) || layer < 0 || layer >= baseModel.NumHiddenLayers
            || !ProjectionNames.TryParseShortName(parts[6], out var projection))
            throw new AdapterValidationException($"tensor '{key}' is not an identity gain of a projection of the base model", "unknown_tensor");
        return (layer, projection);
    }

    public sealed record GainModule(int Layer, Projection Projection, string Key);

    public sealed record ScaledIdentityDescription(ScaledIdentityKind DescribedBy, IReadOnlyList<GainModule> Modules, long WeightBytes) : AdapterDescription(Name, WeightBytes)
    {
        public override IAdapterKindHandler Handler => DescribedBy;
        public override int MaxRank => 0;
        public override IReadOnlyList<string> TargetModules => Modules.Select(m => m.Projection.ShortName()).Distinct().ToList();
        public override IReadOnlyList<AdapterModuleSummary> ModuleSummaries =>
            Modules.Select(m => new AdapterModuleSummary(m.Layer, m.Projection, 0, new Dictionary<string, object> { ["gain"] = true })).ToList();
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
