using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// Checks the tensors of a LoKr or MoKA adapter (names, dtypes, shapes from its safetensors header) against its config
/// and the base model, and describes it. Any problem is an <see cref="AdapterValidationException"/> (400) naming the
/// tensor or config field: a factor missing or given twice, factor products that do not equal the layer's shape,
/// ranks that disagree with r / rank_pattern, a gate of the wrong length, a Tucker core (<c>lokr_t2</c>).
/// NaN/Inf are not seen here (the header holds no values): the store's weight scan refuses them.
/// </summary>
public static partial class KroneckerValidator
{
    public const string WeightsFileName = AdapterFiles.WeightsFileName;
    public const string KeyPrefix = AdapterValidator.KeyPrefix;


    /// <summary><see cref="AdapterKind.Lokr"/> or <see cref="AdapterKind.Moka"/>, from the config's <c>peft_type</c>.</summary>
    public static AdapterKind KindOf(JsonObject config) =>
        (config["peft_type"] is JsonValue v && v.TryGetValue<string>(out var type) ? type.ToUpperInvariant() : null) switch
        {
            LokrConfig.PeftType => AdapterKind.Lokr,
            MokaConfig.PeftType => AdapterKind.Moka,
            _ => throw new AdapterValidationException($"{PeftConfigReader.FileName}: peft_type must be {LokrConfig.PeftType} or {MokaConfig.PeftType} here", "invalid_adapter_config"),
        };

    /// <summary>Parses <paramref name="config"/> (LOKR or MOKA) and checks <paramref name="entries"/> against it and the base.</summary>
    public static KroneckerDescription Describe(JsonObject config, IEnumerable<SafetensorsEntry> entries, ModelConfig baseModel) =>
        KindOf(config) == AdapterKind.Lokr
            ? DescribeLokr(LokrConfig.Parse(config), entries, baseModel)
            : DescribeMoka(MokaConfig.Parse(config), entries, baseModel);

    public static KroneckerDescription DescribeLokr(LokrConfig config, IEnumerable<SafetensorsEntry> entries, ModelConfig baseModel)
    {
        var (modules, bytes) = Group(entries, baseModel, "lokr_", LokrPart);
        var specs = new List<KroneckerModuleSpec>();
        foreach (var ((layer, projection), parts) in modules)
        {
            string module = ProjectionNames.ModulePath(layer, projection);
            string prefix = KeyPrefix + module;
            CheckTargeted(config.Targets(module, layer), module);
            if (parts.TryGetValue("lokr_t2", out var t2))
                throw Tensor(t2.Name, "is a Tucker core (use_effective_conv2d, for convolutions); Tucker-decomposed LoKr factors are not supported", "unsupported_adapter_feature");

            var (dIn, dOut) = baseModel.ProjectionShape(projection);
            int rank = config.RankFor(module);
            var (w1, w1Rank) = Factor(parts, prefix, "lokr_w1", rank);
            var (w2, w2Rank) = Factor(parts, prefix, "lokr_w2", rank);
            var shape = new KroneckerShape(w1.Rows, w1.Cols, w2.Rows, w2.Cols);
            if (shape.OutFeatures != dOut || shape.InFeatures != dIn)
            {
                var peft = config.LayoutFor(module, dOut, dIn).Shape;
                throw new AdapterValidationException(
                    $"{WeightsFileName}: tensors '{w1.Name}' [{w1.Rows}, {w1.Cols}] and '{w2.Name}' [{w2.Rows}, {w2.Cols}] give kron [{shape.OutFeatures}, {shape.InFeatures}], " +
                    $"but {projection.ShortName()} of the base model is [{dOut}, {dIn}] (PEFT's factorization gives {peft})", "shape_mismatch");
            }
            specs.Add(new KroneckerModuleSpec(layer, projection, prefix, rank, config.ScalingFor(module), [shape], w1Rank, w2Rank));
        }
        return new KroneckerDescription(AdapterKind.Lokr, specs, bytes);
    }

    public static KroneckerDescription DescribeMoka(MokaConfig config, IEnumerable<SafetensorsEntry> entries, ModelConfig baseModel)
    {
        var (modules, bytes) = Group(entries, baseModel, "moka_", MokaPart);
        var specs = new List<KroneckerModuleSpec>();
        foreach (var ((layer, projection), parts) in modules)
        {
            string module = ProjectionNames.ModulePath(layer, projection);
            string prefix = KeyPrefix + module;
            CheckTargeted(config.Targets(module, layer), module);
            var (dIn, dOut) = baseModel.ProjectionShape(projection);
            var (components, field) = config.ComponentsFor(module)
                ?? throw new AdapterValidationException(
                    $"{PeftConfigReader.FileName}: module '{module}' has MoKA tensors but neither 'components' nor a 'component_pattern' key covers it", "invalid_adapter_config");
            for (int i = 0; i < components.Count; i++)
                if (components[i].OutFeatures != dOut || components[i].InFeatures != dIn)
                    throw new AdapterValidationException(
                        $"{PeftConfigReader.FileName}: {field}[{i}] {Dims(components[i])} gives kron [{components[i].OutFeatures}, {components[i].InFeatures}] " +
                        $"(ma·mb, na·nb), but {projection.ShortName()} of the base model is [{dOut}, {dIn}] ('{module}')", "shape_mismatch");

            int count = components.Count;
            foreach (var (part, entry) in parts)
            {
                if (part == "moka_gate") continue;
                int index = int.Parse(part[(part.IndexOf('.') + 1)..], CultureInfo.InvariantCulture);
                if (index >= count)
                    throw Tensor(entry.Name, $"is component {index}, but {field} gives '{module}' {count} components (0..{count - 1})", "invalid_adapter_weights");
            }
            for (int i = 0; i < count; i++)
            {
                var c = components[i];
                CheckShape(parts, prefix, $"moka_A.{i}", [c.Ma, c.Na], $"[ma, na] of {field}[{i}]");
                CheckShape(parts, prefix, $"moka_B.{i}", [c.Mb, c.Nb], $"[mb, nb] of {field}[{i}]");
            }
            CheckShape(parts, prefix, "moka_gate", [count], $"one gate logit per component: {field} gives {count}");
            specs.Add(new KroneckerModuleSpec(layer, projection, prefix, 0, config.Scaling, components));
        }
        return new KroneckerDescription(AdapterKind.Moka, specs, bytes);
    }

    private sealed record Matrix(string Name, int Rows, int Cols);

    /// <summary>A LoKr factor stored whole (<c>name</c>) or low-rank (<c>name_a · name_b</c>), with its inner rank.</summary>
    private static (Matrix Factor, int? Rank) Factor(Dictionary<string, SafetensorsEntry> parts, string prefix, string name, int rank)
    {
        bool whole = parts.TryGetValue(name, out var w);
        bool hasA = parts.TryGetValue(name + "_a", out var a);
        bool hasB = parts.TryGetValue(name + "_b", out var b);
        if (whole && (hasA || hasB))
            throw Tensor((hasA ? a! : b!).Name, $"is present together with '{w!.Name}'; a LoKr factor is either whole or low-rank ({name}_a·{name}_b)", "invalid_adapter_weights");
        if (whole) return (Matrix2(w!), null);
        if (!hasA && !hasB) throw Tensor($"{prefix}.{name}", $"is missing (neither {name} nor {name}_a/{name}_b; the module has other LoKr tensors)", "missing_tensor");
        if (!hasA) throw Tensor($"{prefix}.{name}_a", $"is missing ({name}_b is present)", "missing_tensor");
        if (!hasB) throw Tensor($"{prefix}.{name}_b", $"is missing ({name}_a is present)", "missing_tensor");
        var ma = Matrix2(a!);
        var mb = Matrix2(b!);
        if (ma.Cols != mb.Rows)
            throw Tensor(b!.Name, $"has shape [{mb.Rows}, {mb.Cols}] but '{a!.Name}' is [{ma.Rows}, {ma.Cols}]: the inner ranks differ", "rank_mismatch");
        if (ma.Cols != rank)
            throw Tensor(a!.Name, $"has rank {ma.Cols} but adapter_config.json gives r = {rank} for this module (r / rank_pattern)", "rank_mismatch");
        return (new Matrix($"{a!.Name}·{name}_b", ma.Rows, mb.Cols), ma.Cols);
    }

    private static Matrix Matrix2(SafetensorsEntry e)
    {
        if (e.Shape.Length != 2 || e.Shape[0] < 1 || e.Shape[1] < 1 || e.Shape[0] > int.MaxValue || e.Shape[1] > int.MaxValue)
            throw Tensor(e.Name, $"has shape {Shape(e.Shape)}; a LoKr factor is a non-empty matrix", "shape_mismatch");
        return new Matrix(e.Name, (int)e.Shape[0], (int)e.Shape[1]);
    }

    private static void CheckShape(Dictionary<string, SafetensorsEntry> parts, string prefix, string part, long[] shape, string what)
    {
        if (!parts.TryGetValue(part, out var e)) throw Tensor($"{prefix}.{part}", $"is missing ({what})", "missing_tensor");
        if (!e.Shape.SequenceEqual(shape)) throw Tensor(e.Name, $"has shape {Shape(e.Shape)}; expected {Shape(shape)} ({what})", "shape_mismatch");
    }

    private static void CheckTargeted(bool targeted, string module)
    {
        if (!targeted)
            throw new AdapterValidationException(
                $"{WeightsFileName}: tensors of module '{module}' are present but adapter_config.json does not target it (target_modules/exclude_modules/layers_to_transform)",
                "invalid_adapter_weights");
    }

    private static string? LokrPart(string part) =>
        part is "lokr_w1" or "lokr_w1_a" or "lokr_w1_b" or "lokr_w2" or "lokr_w2_a" or "lokr_w2_b" or "lokr_t2" ? part : null;

    private static string? MokaPart(string part) => part == "moka_gate" || MokaIndexedPart().IsMatch(part) ? part : null;

    /// <summary>Tensors by (layer, projection) and part name (<c>lokr_w1</c>, <c>moka_A.0</c>, …), with their total bytes.</summary>
    private static (SortedDictionary<(int, Projection), Dictionary<string, SafetensorsEntry>> Modules, long Bytes) Group(
        IEnumerable<SafetensorsEntry> entries, ModelConfig baseModel, string partPrefix, Func<string, string?> part)
    {
        var modules = new SortedDictionary<(int, Projection), Dictionary<string, SafetensorsEntry>>();
        long bytes = 0;
        foreach (var entry in entries.OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            if (!AdapterValidator.ServedDTypes.Contains(entry.DType))
                throw Tensor(entry.Name, $"has dtype {entry.DType}; adapters must be F32, F16 or BF16", "unsupported_dtype");
            var match = KeyRegex().Match(entry.Name);
            if (!entry.Name.StartsWith(KeyPrefix, StringComparison.Ordinal))
                throw Tensor(entry.Name, $"does not start with '{KeyPrefix}' (not a PEFT adapter key)", "unknown_tensor");
            if (!match.Success)
                throw Tensor(entry.Name, $"is not a tensor of a known projection (model.layers.{{i}}.self_attn.{{q,k,v,o}}_proj, model.layers.{{i}}.mlp.{{gate,up,down}}_proj)", "unknown_target_module");
            string name = match.Groups["part"].Value;
            if (!name.StartsWith(partPrefix, StringComparison.Ordinal) || part(name) is null)
                throw Tensor(entry.Name, $"is not a tensor this adapter kind has ({(partPrefix == "lokr_" ? "lokr_w1, lokr_w1_a, lokr_w1_b, lokr_w2, lokr_w2_a, lokr_w2_b" : "moka_A.{i}, moka_B.{i}, moka_gate")})", "unknown_tensor");
            string index = match.Groups["layer"].Value;
            if (index.Length > 9 || int.Parse(index, CultureInfo.InvariantCulture) >= baseModel.NumHiddenLayers)
                throw Tensor(entry.Name, $"is for layer {index}, but the base model has {baseModel.NumHiddenLayers} layers (0..{baseModel.NumHiddenLayers - 1})", "layer_out_of_range");
            ProjectionNames.TryParseShortName(match.Groups["proj"].Value, out var projection);
            var key = (int.Parse(index, CultureInfo.InvariantCulture), projection);
            if (!modules.TryGetValue(key, out var parts)) modules[key] = parts = [];
            parts[name] = entry;
            bytes += entry.End - entry.Begin;
        }
        if (modules.Count == 0)
            throw new AdapterValidationException($"{WeightsFileName} holds no {(partPrefix == "lokr_" ? "LoKr" : "MoKA")} weights", "invalid_adapter_weights");
        return (modules, bytes);
    }

    [GeneratedRegex(@"^base_model\.model\.model\.layers\.(?<layer>0|[1-9][0-9]*)\.(?:self_attn\.(?<proj>q_proj|k_proj|v_proj|o_proj)|mlp\.(?<proj>gate_proj|up_proj|down_proj))\.(?<part>[A-Za-z0-9_.]+)$")]
    private static partial Regex KeyRegex();

    [GeneratedRegex(@"^moka_[AB]\.(0|[1-9][0-9]{0,5})$")]
    private static partial Regex MokaIndexedPart();

    private static AdapterValidationException Tensor(string name, string problem, string code) =>
        new($"{WeightsFileName}: tensor '{name}' {problem}", code);

    private static string Shape(long[] shape) => "[" + string.Join(", ", shape) + "]";

    private static string Dims(KroneckerShape s) => $"[{s.Ma}, {s.Na}, {s.Mb}, {s.Nb}]";
}
