using System.Text.Json.Nodes;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Store;
using static AdapterServe.Adapters.Kinds.PeftConfigReader;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// The fields of a PEFT <c>adapter_config.json</c> with <c>"peft_type": "LOKR"</c> that decide how the adapter is
/// served (methods.md §2.3). Scaling is always <c>alpha / r</c> with the module's own r and alpha
/// (<c>rank_pattern</c>/<c>alpha_pattern</c>, PEFT's key rule). Training-only fields (<c>rank_dropout</c>,
/// <c>module_dropout</c>, <c>init_weights</c>, …) are accepted and ignored; <c>use_effective_conv2d</c> (Tucker
/// cores for convolutions) is refused.
/// </summary>
public sealed record LokrConfig
{
    public const string PeftType = "LOKR";

    public int R { get; init; } = 8;
    public double Alpha { get; init; } = 8;
    public IReadOnlyList<KeyValuePair<string, int>> RankPattern { get; init; } = [];
    public IReadOnlyList<KeyValuePair<string, double>> AlphaPattern { get; init; } = [];
    /// <summary>null: not given (the adapter's weights decide which modules are adapted).</summary>
    public ModuleSelector? TargetModules { get; init; }
    public ModuleSelector? ExcludeModules { get; init; }
    public IReadOnlyList<int>? LayersToTransform { get; init; }
    /// <summary>w1 may be low-rank too (PEFT creates <c>lokr_w1_a</c>/<c>lokr_w1_b</c> when r is small).</summary>
    public bool DecomposeBoth { get; init; }
    /// <summary>The factor PEFT's <c>factorization</c> aims for; -1: near the square root.</summary>
    public int DecomposeFactor { get; init; } = -1;

    /// <summary>Fields PEFT's LoKrConfig has that change nothing when serving (training only, or bookkeeping).</summary>
    private static readonly HashSet<string> KnownFields =
    [
        "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
        "r", "alpha", "rank_pattern", "alpha_pattern", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
        "decompose_both", "decompose_factor", "rank_dropout", "module_dropout", "init_weights", "rank_dropout_scale",
        "use_effective_conv2d", "modules_to_save",
    ];

    public int RankFor(string modulePath) => PeftPatterns.FirstMatch(RankPattern, modulePath, out var rank) ? rank : R;

    public double AlphaFor(string modulePath) => PeftPatterns.FirstMatch(AlphaPattern, modulePath, out var alpha) ? alpha : Alpha;

    /// <summary>PEFT's LoKr scaling <c>alpha / r</c> of one module (patterns applied).</summary>
    public double ScalingFor(string modulePath) => AlphaFor(modulePath) / RankFor(modulePath);

    public bool Targets(string modulePath, int layer) =>
        (TargetModules?.Matches(modulePath) ?? true)
        && !(ExcludeModules?.Matches(modulePath) ?? false)
        && (LayersToTransform is null || LayersToTransform.Contains(layer));

    /// <summary>The factor layout PEFT would create for this module of a base layer <c>[d_out, d_in]</c>.</summary>
    public LokrLayout LayoutFor(string modulePath, int dOut, int dIn) =>
        LokrFactorization.Layout(dOut, dIn, RankFor(modulePath), DecomposeBoth, DecomposeFactor);

    public static LokrConfig Parse(JsonObject o)
    {
        string peftType = OptionalString(o, "peft_type") ?? throw Invalid($"{FileName}: field 'peft_type' is missing (expected \"{PeftType}\")");
        if (!peftType.Equals(PeftType, StringComparison.OrdinalIgnoreCase))
            throw Invalid($"{FileName}: peft_type '{peftType}' is not {PeftType}");

        if (OptionalBool(o, "use_effective_conv2d") == true)
            throw Unsupported($"{FileName}: use_effective_conv2d is not supported (Tucker-decomposed lokr_t2 factors for convolutions; the served model has only linear projections)");
        RefuseUnknownVariants(o, KnownFields);

        int r = OptionalInt(o, "r") ?? 8;
        if (r <= 0) throw Invalid($"{FileName}: field 'r' must be a positive integer (got {r})");
        double alpha = OptionalNumber(o, "alpha") ?? 8;
        int factor = OptionalInt(o, "decompose_factor") ?? -1;
        if (factor is 0 or < -1) throw Invalid($"{FileName}: field 'decompose_factor' must be -1 or a positive integer (got {factor})");

        var rankPattern = Patterns(o, "rank_pattern", (key, v) =>
        {
            int rank = Int(v, $"rank_pattern['{key}']");
            return rank > 0 ? rank : throw Invalid($"{FileName}: rank_pattern['{key}'] must be a positive integer (got {rank})");
        });
        var alphaPattern = Patterns(o, "alpha_pattern", (key, v) =>
            v is JsonValue jv && jv.TryGetValue<double>(out double d) && double.IsFinite(d) ? d
                : throw Invalid($"{FileName}: alpha_pattern['{key}'] must be a number (got {v?.ToJsonString() ?? "null"})"));

        var target = Selector(o, "target_modules");
        return new LokrConfig
        {
            R = r,
            Alpha = alpha,
            RankPattern = rankPattern,
            AlphaPattern = alphaPattern,
            TargetModules = target,
            ExcludeModules = Selector(o, "exclude_modules"),
            LayersToTransform = Layers(o, target),
            DecomposeBoth = OptionalBool(o, "decompose_both") ?? false,
            DecomposeFactor = factor,
        };
    }
}
