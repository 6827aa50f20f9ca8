using System.Globalization;
using System.Text.RegularExpressions;
using AdapterServe.Modeling;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling.Safetensors;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// Checks an S'MoRE directory (<c>adapter_config.json</c> with peft_type HIER_MOE + <c>adapter_model.safetensors</c>)
/// against the base model: the config strictly (<see cref="SmoreConfig"/>), every tensor a known <c>moe_*</c> tensor of
/// a known projection with the shape the config and the base imply (so levels whose dimensions do not chain are
/// refused), every required tensor present, a served dtype, and (unless told not to) no NaN/Inf. Every problem is an
/// <see cref="AdapterValidationException"/> (400) naming the field or tensor.
/// </summary>
public static partial class SmoreValidator
{
    public const string WeightsFileName = AdapterFiles.WeightsFileName;
    public const string KeyPrefix = AdapterValidator.KeyPrefix;


    /// <summary>Reads <c>adapter_config.json</c> of <paramref name="directory"/> and validates the directory.</summary>
    public static SmoreDescription Validate(string directory, ModelConfig baseModel, bool scanWeights = true) =>
        Validate(directory, SmoreConfig.Parse(AdapterValidator.ReadConfig(directory)), baseModel, scanWeights);

    public static SmoreDescription Validate(string directory, SmoreConfig config, ModelConfig baseModel, bool scanWeights = true)
    {
        if (!File.Exists(Path.Combine(directory, WeightsFileName))) throw new AdapterValidationException($"{WeightsFileName} is missing", "missing_adapter_weights");
        using var file = AdapterValidator.OpenSafetensors(directory, WeightsFileName);
        var description = Describe(file.Tensors.Values, config, baseModel);
        if (scanWeights) AdapterValidator.RefuseNonFinite(directory, WeightsFileName, file.Tensors.Values);
        return description;
    }

    /// <summary>Checks the tensor names, dtypes and shapes of a header against the config and the base.</summary>
    public static SmoreDescription Describe(IEnumerable<SafetensorsEntry> entries, SmoreConfig config, ModelConfig baseModel)
    {
        var modules = new Dictionary<(int Layer, Projection Projection), Dictionary<string, SafetensorsEntry>>();
        long bytes = 0;
        foreach (var entry in entries.OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            if (!AdapterValidator.ServedDTypes.Contains(entry.DType))
                throw Tensor(entry.Name, $"has dtype {entry.DType}; adapters must be F32, F16 or BF16", "unsupported_dtype");
            var (layer, projection, suffix) = ParseKey(entry.Name, baseModel);
            var parts = modules.TryGetValue((layer, projection), out var p) ? p : modules[(layer, projection)] = [];
            parts[suffix] = entry;
            bytes += entry.End - entry.Begin;
        }
        if (modules.Count == 0) throw new AdapterValidationException($"{WeightsFileName} holds no S'MoRE weights", "invalid_adapter_weights");

        var specs = new List<SmoreModuleSpec>();
        foreach (var ((layer, projection), parts) in modules.OrderBy(m => m.Key.Layer).ThenBy(m => m.Key.Projection))
        {
            string module = ProjectionNames.ModulePath(layer, projection);
            string prefix = KeyPrefix + module;
            if (!config.Targets(module, layer))
                throw new AdapterValidationException(
                    $"{WeightsFileName}: tensors of module '{module}' are present but adapter_config.json does not target it (target_modules/exclude_modules/layers_to_transform)",
                    "invalid_adapter_weights");
            var (dIn, dOut) = baseModel.ProjectionShape(projection);
            var layout = SmoreLayout.Tensors(config, dIn, dOut);
            foreach (var (suffix, entry) in parts)
            {
                var spec = layout.FirstOrDefault(t => t.Suffix == suffix)
                    ?? throw Tensor(entry.Name, $"is not an S'MoRE tensor of this config (expected {string.Join(", ", layout.Select(t => t.Suffix))})", "unknown_tensor");
                if (!entry.Shape.SequenceEqual(spec.Shape))
                    throw Tensor(entry.Name, $"has shape {Shape(entry.Shape)}; expected {spec.Why}", "shape_mismatch");
            }
            foreach (var spec in layout.Where(t => !t.Optional && !parts.ContainsKey(t.Suffix)))
                throw Tensor($"{prefix}.{spec.Suffix}", $"is missing (S'MoRE needs {spec.Why})", "missing_tensor");
            specs.Add(new SmoreModuleSpec(layer, projection, dIn, dOut, prefix));
        }
        return new SmoreDescription(config, specs, bytes);
    }

    private static (int Layer, Projection Projection, string Suffix) ParseKey(string key, ModelConfig baseModel)
    {
        if (!key.StartsWith(KeyPrefix, StringComparison.Ordinal))
            throw Tensor(key, $"does not start with '{KeyPrefix}' (not a PEFT adapter key)", "unknown_tensor");
        string rest = key[KeyPrefix.Length..];
        int start = SmoreLayout.SuffixStart(rest);
        if (start < 0) throw Tensor(key, "is not an S'MoRE tensor (expected <module>.moe_…)", "unknown_tensor");
        string module = rest[..(start - 1)];
        var match = ModulePathRegex().Match(module);
        if (!match.Success)
            throw Tensor(key, $"targets unknown module '{module}' (known: model.layers.{{i}}.self_attn.{{q,k,v,o}}_proj, model.layers.{{i}}.mlp.{{gate,up,down}}_proj)", "unknown_target_module");
        string index = match.Groups["layer"].Value;
        if (index.Length > 9 || int.Parse(index, CultureInfo.InvariantCulture) >= baseModel.NumHiddenLayers)
            throw Tensor(key, $"is for layer {index}, but the base model has {baseModel.NumHiddenLayers} layers (0..{baseModel.NumHiddenLayers - 1})", "layer_out_of_range");
        ProjectionNames.TryParseShortName(match.Groups["proj"].Value, out var projection);
        return (int.Parse(index, CultureInfo.InvariantCulture), projection, rest[start..]);
    }

    [GeneratedRegex(@"^model\.layers\.(?<layer>0|[1-9][0-9]*)\.(?:self_attn\.(?<proj>q_proj|k_proj|v_proj|o_proj)|mlp\.(?<proj>gate_proj|up_proj|down_proj))$")]
    private static partial Regex ModulePathRegex();

    private static AdapterValidationException Tensor(string name, string problem, string code) =>
        new($"{WeightsFileName}: tensor '{name}' {problem}", code);

    private static string Shape(long[] shape) => "[" + string.Join(", ", shape) + "]";
}
