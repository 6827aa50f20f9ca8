using System.Globalization;
using System.Text.RegularExpressions;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Mixtures;

/// <summary>
/// The tensors of a mixture kind's safetensors file, grouped by adapted module: keys
/// <c>base_model.model.model.layers.{i}.{self_attn|mlp}.{x}_proj.{suffix}</c> where the kind says which suffixes exist.
/// Refuses (400 naming the tensor) unknown keys, unknown modules, layers the base lacks and unserved dtypes, and
/// scans the weights for NaN/Inf.
/// </summary>
internal static partial class MixtureTensors
{
    public const string KeyPrefix = "base_model.model.";


    /// <summary>Opens <paramref name="path"/> as safetensors, mapping format errors to 400s that name <paramref name="fileName"/>.</summary>
    public static SafetensorsFile Open(string path, string fileName)
    {
        if (!File.Exists(path)) throw new AdapterValidationException($"{fileName} is missing", "missing_adapter_weights");
        try { return SafetensorsFile.Open(path); }
        catch (SafetensorsFormatException e) { throw new AdapterValidationException($"{fileName}: {e.Message.Replace(path, fileName)}", "invalid_safetensors"); }
        catch (IOException e) { throw new AdapterValidationException($"{fileName} cannot be read: {e.Message.Replace(path, fileName)}", "invalid_safetensors"); }
    }

    /// <summary>(layer, projection) → suffix → entry, for every key of the file.</summary>
    /// <param name="suffix">Whether a key suffix (after the module path, e.g. <c>router.weight</c>) belongs to the kind.</param>
    public static SortedDictionary<(int Layer, Projection Projection), Dictionary<string, SafetensorsEntry>> Index(
        SafetensorsFile file, string fileName, ModelConfig baseModel, Func<string, bool> suffix, string expected)
    {
        var modules = new SortedDictionary<(int, Projection), Dictionary<string, SafetensorsEntry>>();
        foreach (var entry in file.Tensors.Values.OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            if (!AdapterValidator.ServedDTypes.Contains(entry.DType))
                throw Tensor(fileName, entry.Name, $"has dtype {entry.DType}; weights must be F32, F16 or BF16", "unsupported_dtype");
            if (!entry.Name.StartsWith(KeyPrefix, StringComparison.Ordinal))
                throw Tensor(fileName, entry.Name, $"does not start with '{KeyPrefix}' (not a PEFT adapter key)", "unknown_tensor");
            var match = ModuleKeyRegex().Match(entry.Name[KeyPrefix.Length..]);
            if (!match.Success || !suffix(match.Groups["suffix"].Value))
                throw Tensor(fileName, entry.Name, $"is not a tensor this kind knows (expected {expected} of a projection)", "unknown_tensor");
            string index = match.Groups["layer"].Value;
            if (index.Length > 9 || int.Parse(index, CultureInfo.InvariantCulture) >= baseModel.NumHiddenLayers)
                throw Tensor(fileName, entry.Name, $"is for layer {index}, but the base model has {baseModel.NumHiddenLayers} layers (0..{baseModel.NumHiddenLayers - 1})", "layer_out_of_range");
            ProjectionNames.TryParseShortName(match.Groups["proj"].Value, out var projection);
            var key = (int.Parse(index, CultureInfo.InvariantCulture), projection);
            if (!modules.TryGetValue(key, out var parts)) modules[key] = parts = [];
            parts[match.Groups["suffix"].Value] = entry;
        }
        return modules;
    }

    /// <summary>Checks an entry's shape; the message names the tensor, what it has and what the base needs.</summary>
    public static void ExpectShape(string fileName, SafetensorsEntry entry, long[] shape, string meaning)
    {
        if (!entry.Shape.SequenceEqual(shape))
            throw Tensor(fileName, entry.Name, $"has shape [{string.Join(", ", entry.Shape)}]; expected [{string.Join(", ", shape)}] ({meaning})", "shape_mismatch");
    }

    /// <summary>Reads every tensor as float32 and refuses the first that holds NaN or ±Inf.</summary>
    public static void RefuseNonFinite(SafetensorsFile file, string fileName)
    {
        foreach (var entry in file.Tensors.Values.OrderBy(e => e.Begin))
        {
            using var scope = NewDisposeScope();
            var flat = file.Read(entry.Name, ScalarType.Float32, CPU).flatten();                  // validation, not a hot path
            var bad = flat.isfinite().logical_not().nonzero();                                     // [count, 1]
            if (bad.size(0) == 0) continue;
            long element = bad[0][0].item<long>();
            float value = flat[element].item<float>();
            throw Tensor(fileName, entry.Name, $"holds {(float.IsNaN(value) ? "NaN" : "Inf")} (element {element}); weights must be finite", "non_finite_weights");
        }
    }

    public static AdapterValidationException Tensor(string fileName, string name, string problem, string code) =>
        new($"{fileName}: tensor '{name}' {problem}", code);

    [GeneratedRegex(@"^(?<module>model\.layers\.(?<layer>0|[1-9][0-9]*)\.(?:self_attn\.(?<proj>q_proj|k_proj|v_proj|o_proj)|mlp\.(?<proj>gate_proj|up_proj|down_proj)))\.(?<suffix>.+)$")]
    private static partial Regex ModuleKeyRegex();
}
