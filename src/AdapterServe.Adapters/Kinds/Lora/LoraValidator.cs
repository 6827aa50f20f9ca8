using System.Globalization;
using System.Text.RegularExpressions;
using AdapterServe.Modeling;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling.Safetensors;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>
/// Checks a PEFT LoRA directory against the base model and describes it (methods.md §1, §2, §5): every tensor must
/// belong to a known module of the base with the right shape and a served dtype, and (unless told not to) every
/// weight is scanned for NaN/Inf. Any problem is an <see cref="AdapterValidationException"/> naming the file, field or tensor.
/// </summary>
internal static partial class LoraValidator
{
    private const string WeightsFileName = AdapterFiles.WeightsFileName;
    private const string KeyPrefix = AdapterValidator.KeyPrefix;


    private enum Part { A, B, Bias, Magnitude, Diag }

    private static readonly (string Suffix, Part Part)[] Suffixes =
    [
        (".lora_A.weight", Part.A), (".lora_B.weight", Part.B), (".lora_B.bias", Part.Bias),
        (".lora_magnitude_vector", Part.Magnitude), (".lora_diag", Part.Diag),
    ];

    public static LoraDescription Validate(string directory, PeftLoraConfig config, ModelConfig baseModel, AdapterValidationOptions options)
    {
        string weightsPath = Path.Combine(directory, WeightsFileName);
        if (!File.Exists(weightsPath))
        {
            string hint = File.Exists(Path.Combine(directory, AdapterValidator.PickleFileName))
                ? " (adapter_model.bin, a PyTorch pickle, is not accepted: save the adapter with safe_serialization=True)" : "";
            throw new AdapterValidationException($"{WeightsFileName} is missing{hint}", "missing_adapter_weights");
        }

        using var file = AdapterValidator.OpenSafetensors(directory, WeightsFileName);
        var description = Describe(file.Tensors.Values, config, baseModel, options);
        if (options.ScanWeights) AdapterValidator.RefuseNonFinite(directory, WeightsFileName, file.Tensors.Values);
        return description;
    }

    private static LoraDescription Describe(IEnumerable<SafetensorsEntry> entries, PeftLoraConfig config, ModelConfig baseModel, AdapterValidationOptions options)
    {
        var modules = new Dictionary<(int Layer, Projection Projection), Dictionary<Part, SafetensorsEntry>>();
        long weightBytes = 0;
        foreach (var entry in entries.OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            if (!AdapterValidator.ServedDTypes.Contains(entry.DType))
                throw Tensor(entry.Name, $"has dtype {entry.DType}; adapters must be F32, F16 or BF16", "unsupported_dtype");
            var (layer, projection, part) = ParseKey(entry.Name, baseModel);
            var parts = modules.TryGetValue((layer, projection), out var p) ? p : modules[(layer, projection)] = [];
            parts[part] = entry;
            weightBytes += entry.End - entry.Begin;
        }
        if (modules.Count == 0) throw new AdapterValidationException($"{WeightsFileName} holds no LoRA weights", "invalid_adapter_weights");

        bool kasa = config.UseKasa || modules.Values.Any(m => m.ContainsKey(Part.Diag));
        var specs = new List<AdapterModuleSpec>();
        foreach (var ((layer, projection), parts) in modules.OrderBy(m => m.Key.Layer).ThenBy(m => m.Key.Projection))
            specs.Add(DescribeModule(layer, projection, parts, config, baseModel, kasa));

        var kind = kasa ? AdapterKind.Kasa : config.UseDora ? AdapterKind.Dora : AdapterKind.Lora;
        return new LoraDescription(kind, specs, config.FanInFanOut, config.KasaTruncation ?? options.DefaultKasaTruncation, weightBytes);
    }

    private static AdapterModuleSpec DescribeModule(int layer, Projection projection, Dictionary<Part, SafetensorsEntry> parts,
        PeftLoraConfig config, ModelConfig baseModel, bool kasa)
    {
        string module = ProjectionNames.ModulePath(layer, projection);
        string prefix = KeyPrefix + module;
        var (dIn, dOut) = baseModel.ProjectionShape(projection);

        if (!config.Targets(module, layer))
            throw new AdapterValidationException(
                $"{WeightsFileName}: tensors of module '{module}' are present but adapter_config.json does not target it (target_modules/exclude_modules/layers_to_transform)",
                "invalid_adapter_weights");
        if (!parts.TryGetValue(Part.A, out var a)) throw Tensor(prefix + ".lora_A.weight", "is missing (the module has other LoRA tensors)", "missing_tensor");
        if (!parts.TryGetValue(Part.B, out var b)) throw Tensor(prefix + ".lora_B.weight", "is missing (the module has other LoRA tensors)", "missing_tensor");

        if (a.Shape.Length != 2 || a.Shape[1] != dIn || a.Shape[0] < 1)
            throw Tensor(a.Name, $"has shape {Shape(a.Shape)}; expected [r, {dIn}] for {projection.ShortName()} of the base model (r ≥ 1)", "shape_mismatch");
        int rank = checked((int)a.Shape[0]);
        if (b.Shape.Length != 2 || b.Shape[0] != dOut)
            throw Tensor(b.Name, $"has shape {Shape(b.Shape)}; expected [{dOut}, r] for {projection.ShortName()} of the base model", "shape_mismatch");
        if (b.Shape[1] != rank)
            throw Tensor(b.Name, $"has rank {b.Shape[1]} but lora_A has rank {rank} (shapes {Shape(b.Shape)} and {Shape(a.Shape)})", "rank_mismatch");

        int configured = config.RankFor(module);
        if (configured != rank)
            throw Tensor(a.Name, $"has rank {rank} but adapter_config.json gives r = {configured} for '{module}' (r / rank_pattern)", "rank_mismatch");

        bool hasBias = parts.TryGetValue(Part.Bias, out var bias);
        if (hasBias && !config.LoraBias) throw Tensor(bias!.Name, "is present but adapter_config.json has lora_bias false", "invalid_adapter_weights");
        if (!hasBias && config.LoraBias) throw Tensor(prefix + ".lora_B.bias", "is missing (adapter_config.json has lora_bias true)", "missing_tensor");
        if (hasBias) CheckVector(bias!, dOut, "d_out");

        bool hasMagnitude = parts.TryGetValue(Part.Magnitude, out var magnitude);
        if (hasMagnitude && !config.UseDora) throw Tensor(magnitude!.Name, "is present but adapter_config.json has use_dora false", "invalid_adapter_weights");
        if (!hasMagnitude && config.UseDora) throw Tensor(prefix + ".lora_magnitude_vector", "is missing (adapter_config.json has use_dora true)", "missing_tensor");
        if (hasMagnitude) CheckVector(magnitude!, dOut, "d_out");

        bool hasDiag = parts.TryGetValue(Part.Diag, out var diag);
        if (kasa && !hasDiag) throw Tensor(prefix + ".lora_diag", "is missing (a KaSA adapter needs lora_diag [r] on every module)", "missing_tensor");
        if (hasDiag) CheckVector(diag!, rank, "r");

        return new AdapterModuleSpec(layer, projection, rank, config.ScalingFor(module, rank), hasBias, hasMagnitude, hasDiag, prefix);
    }

    private static void CheckVector(SafetensorsEntry e, int length, string what)
    {
        if (e.Shape.Length != 1 || e.Shape[0] != length)
            throw Tensor(e.Name, $"has shape {Shape(e.Shape)}; expected [{length}] ({what})", "shape_mismatch");
    }

    private static (int Layer, Projection Projection, Part Part) ParseKey(string key, ModelConfig baseModel)
    {
        if (!key.StartsWith(KeyPrefix, StringComparison.Ordinal))
            throw Tensor(key, $"does not start with '{KeyPrefix}' (not a PEFT adapter key)", "unknown_tensor");
        string rest = key[KeyPrefix.Length..];
        foreach (var (suffix, part) in Suffixes)
        {
            if (!rest.EndsWith(suffix, StringComparison.Ordinal)) continue;
            string module = rest[..^suffix.Length];
            var match = ModulePathRegex().Match(module);
            if (!match.Success)
                throw Tensor(key, $"targets unknown module '{module}' (known: model.layers.{{i}}.self_attn.{{q,k,v,o}}_proj, model.layers.{{i}}.mlp.{{gate,up,down}}_proj)", "unknown_target_module");
            string index = match.Groups["layer"].Value;
            if (index.Length > 9 || int.Parse(index, CultureInfo.InvariantCulture) >= baseModel.NumHiddenLayers)
                throw Tensor(key, $"is for layer {index}, but the base model has {baseModel.NumHiddenLayers} layers (0..{baseModel.NumHiddenLayers - 1})", "layer_out_of_range");
            ProjectionNames.TryParseShortName(match.Groups["proj"].Value, out var projection);
            return (int.Parse(index, CultureInfo.InvariantCulture), projection, part);
        }
        throw Tensor(key, "is not a LoRA tensor this server knows (expected lora_A.weight, lora_B.weight, lora_B.bias, lora_magnitude_vector or lora_diag of a projection)", "unknown_tensor");
    }

    [GeneratedRegex(@"^model\.layers\.(?<layer>0|[1-9][0-9]*)\.(?:self_attn\.(?<proj>q_proj|k_proj|v_proj|o_proj)|mlp\.(?<proj>gate_proj|up_proj|down_proj))$")]
    private static partial Regex ModulePathRegex();

    private static AdapterValidationException Tensor(string name, string problem, string code) =>
        new($"{WeightsFileName}: tensor '{name}' {problem}", code);

    private static string Shape(long[] shape) => "[" + string.Join(", ", shape) + "]";
}
