using System.Globalization;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;

namespace AdapterServe.Adapters.Kinds.Omoe;

/// <summary>One adapted module of an OMoE adapter; its tensors are <c>{TensorPrefix}.omoe_A.{i}</c>, <c>.omoe_B.{i}</c>, <c>.omoe_router.weight</c>.</summary>
public sealed record OmoeModuleSpec(int Layer, Projection Projection, string TensorPrefix);

/// <summary>A validated OMoE directory.</summary>
public sealed record OmoeLayout(OmoeConfig Config, IReadOnlyList<OmoeModuleSpec> Modules, long WeightBytes);

/// <summary>
/// Checks an OMoE directory against the base model: the config (strictly), per module all n experts' A and B and the
/// router with the base's shapes, only targeted modules, finite weights. Each problem is a 400 naming the field or tensor.
/// </summary>
public static class OmoeValidator
{
    public static OmoeLayout Validate(string directory, ModelConfig baseModel, AdapterValidationOptions? options = null) =>
        Validate(directory, OmoeConfig.Load(Path.Combine(directory, OmoeConfig.FileName)), baseModel, options);

    public static OmoeLayout Validate(string directory, OmoeConfig config, ModelConfig baseModel, AdapterValidationOptions? options = null)
    {
        options ??= new AdapterValidationOptions();
        const string file = OmoeConfig.WeightsFileName;
        int n = config.NumExperts, r = config.R;
        bool Known(string suffix) => suffix == "omoe_router.weight"
            || (suffix.StartsWith("omoe_A.", StringComparison.Ordinal) || suffix.StartsWith("omoe_B.", StringComparison.Ordinal))
               && int.TryParse(suffix.AsSpan(7), NumberStyles.None, CultureInfo.InvariantCulture, out int i) && i < n && i.ToString(CultureInfo.InvariantCulture) == suffix[7..];

        using var weights = MixtureTensors.Open(Path.Combine(directory, file), file);
        var modules = MixtureTensors.Index(weights, file, baseModel, Known, $"omoe_A.{{0..{n - 1}}}, omoe_B.{{0..{n - 1}}} or omoe_router.weight");
        if (modules.Count == 0) throw new AdapterValidationException($"{file} holds no OMoE weights", "invalid_adapter_weights");

        var specs = new List<OmoeModuleSpec>();
        long bytes = 0;
        foreach (var ((layer, projection), parts) in modules)
        {
            string module = ProjectionNames.ModulePath(layer, projection);
            string prefix = MixtureTensors.KeyPrefix + module;
            if (config.TargetModules is { } target && !target.Matches(module))
                throw MixtureTensors.Tensor(file, parts.Values.First().Name, $"is for '{module}', which adapter_config.json's target_modules does not select", "invalid_adapter_weights");
            var (dIn, dOut) = baseModel.ProjectionShape(projection);
            Check("omoe_router.weight", [n, dIn], $"[num_experts = {n}, d_in = {dIn}]");
            for (int i = 0; i < n; i++)
            {
                Check($"omoe_A.{i}", [r, dIn], $"[r = {r}, d_in = {dIn}] for {projection.ShortName()} of the base model");
                Check($"omoe_B.{i}", [dOut, r], $"[d_out = {dOut}, r = {r}] for {projection.ShortName()} of the base model");
            }
            specs.Add(new OmoeModuleSpec(layer, projection, prefix));
            bytes += parts.Values.Sum(p => p.End - p.Begin);

            void Check(string suffix, long[] shape, string meaning)
            {
                if (!parts.TryGetValue(suffix, out var entry))
                    throw MixtureTensors.Tensor(file, $"{prefix}.{suffix}", "is missing (every module needs omoe_A.i and omoe_B.i for each of num_experts experts and omoe_router.weight)", "missing_tensor");
                MixtureTensors.ExpectShape(file, entry, shape, meaning);
            }
        }
        if (options.ScanWeights) MixtureTensors.RefuseNonFinite(weights, file);
        return new OmoeLayout(config, specs, bytes);
    }
}
