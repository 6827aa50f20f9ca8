using System.Text.Json.Nodes;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Store;
using static AdapterServe.Adapters.Kinds.PeftConfigReader;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// The project's MoKA format (methods.md §3): <c>{"peft_type": "MOKA", "target_modules": [...], "components":
/// [[ma, na, mb, nb], ...], "component_pattern": {"q_proj": [[...], ...]}, "scaling": 1.0}</c>. A module's components
/// come from the first <c>component_pattern</c> key that matches it (PEFT's <c>rank_pattern</c> rule), else from
/// <c>components</c>; a file may carry only <c>component_pattern</c>.
/// </summary>
public sealed record MokaConfig
{
    public const string PeftType = "MOKA";

    public ModuleSelector? TargetModules { get; init; }
    public ModuleSelector? ExcludeModules { get; init; }
    public IReadOnlyList<int>? LayersToTransform { get; init; }
    /// <summary>Components of every targeted module without a <see cref="ComponentPattern"/> entry; null when not given.</summary>
    public IReadOnlyList<KroneckerShape>? Components { get; init; }
    public IReadOnlyList<KeyValuePair<string, IReadOnlyList<KroneckerShape>>> ComponentPattern { get; init; } = [];
    public double Scaling { get; init; } = 1.0;

    private static readonly HashSet<string> KnownFields =
    [
        "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
        "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "components", "component_pattern", "scaling",
        "init_weights", "modules_to_save",
    ];

    public bool Targets(string modulePath, int layer) =>
        (TargetModules?.Matches(modulePath) ?? true)
        && !(ExcludeModules?.Matches(modulePath) ?? false)
        && (LayersToTransform is null || LayersToTransform.Contains(layer));

    /// <summary>The module's components and the config field they come from, or null when neither field covers it.</summary>
    public (IReadOnlyList<KroneckerShape> Components, string Field)? ComponentsFor(string modulePath)
    {
        foreach (var (key, list) in ComponentPattern)
            if (PeftPatterns.PatternKeyMatches(key, modulePath)) return (list, $"component_pattern['{key}']");
        return Components is null ? null : (Components, "components");
    }

    public static MokaConfig Parse(JsonObject o)
    {
        string peftType = OptionalString(o, "peft_type") ?? throw Invalid($"{FileName}: field 'peft_type' is missing (expected \"{PeftType}\")");
        if (!peftType.Equals(PeftType, StringComparison.OrdinalIgnoreCase))
            throw Invalid($"{FileName}: peft_type '{peftType}' is not {PeftType}");
        RefuseUnknownVariants(o, KnownFields);

        var components = o["components"] is { } c ? ComponentList(c, "components") : null;
        var pattern = Patterns(o, "component_pattern", (key, v) => ComponentList(v, $"component_pattern['{key}']"));
        if (components is null && pattern.Count == 0)
            throw Invalid($"{FileName}: a MoKA adapter needs 'components' (a list of [ma, na, mb, nb]) or 'component_pattern'");
        double scaling = OptionalNumber(o, "scaling") ?? 1.0;

        var target = Selector(o, "target_modules");
        return new MokaConfig
        {
            TargetModules = target,
            ExcludeModules = Selector(o, "exclude_modules"),
            LayersToTransform = Layers(o, target),
            Components = components,
            ComponentPattern = pattern,
            Scaling = scaling,
        };
    }

    private static IReadOnlyList<KroneckerShape> ComponentList(JsonNode? node, string field)
    {
        if (node is not JsonArray list || list.Count == 0)
            throw Invalid($"{FileName}: {field} must be a non-empty list of [ma, na, mb, nb] (got {node?.ToJsonString() ?? "null"})");
        var shapes = new List<KroneckerShape>(list.Count);
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i] is not JsonArray dims || dims.Count != 4)
                throw Invalid($"{FileName}: {field}[{i}] must be [ma, na, mb, nb] (got {list[i]?.ToJsonString() ?? "null"})");
            var d = dims.Select(x => Int(x, $"{field}[{i}]")).ToArray();
            if (d.Any(v => v <= 0)) throw Invalid($"{FileName}: {field}[{i}] must hold positive integers (got {dims.ToJsonString()})");
            shapes.Add(new KroneckerShape(d[0], d[1], d[2], d[3]));
        }
        return shapes;
    }
}
