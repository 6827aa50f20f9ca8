using System.Text.Json.Nodes;
using AdapterServe.Adapters.Store;
using static AdapterServe.Adapters.Kinds.PeftConfigReader;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>How <c>target_modules</c> / <c>exclude_modules</c> select module paths (PEFT rules).</summary>
public abstract record ModuleSelector
{
    /// <summary>A list: a module matches entry t when its path equals t or ends with "." + t.</summary>
    public sealed record NameList(IReadOnlyList<string> Names) : ModuleSelector;
    /// <summary>A string: the whole module path must match the regular expression.</summary>
    public sealed record FullMatch(string Pattern) : ModuleSelector;
    /// <summary>"all-linear": every linear layer but the LM head, i.e. all seven projections.</summary>
    public sealed record AllLinear : ModuleSelector;

    public bool Matches(string modulePath) => this switch
    {
        NameList l => l.Names.Any(t => modulePath == t || modulePath.EndsWith("." + t, StringComparison.Ordinal)),
        FullMatch f => PeftPatterns.FullMatch(f.Pattern, modulePath),
        AllLinear => true,
        _ => false,
    };
}

/// <summary>
/// The fields of a PEFT <c>adapter_config.json</c> (peft_type LORA) that decide how the adapter is served, read
/// strictly: a field this server cannot honour is refused with a message naming it (methods.md §2.1).
/// </summary>
public sealed record PeftLoraConfig
{
    public const string FileName = "adapter_config.json";

    public int R { get; init; } = 8;
    public double LoraAlpha { get; init; } = 8;
    public bool UseRslora { get; init; }
    /// <summary>rank_pattern in file order: regex key → rank.</summary>
    public IReadOnlyList<KeyValuePair<string, int>> RankPattern { get; init; } = [];
    /// <summary>alpha_pattern in file order: regex key → alpha.</summary>
    public IReadOnlyList<KeyValuePair<string, double>> AlphaPattern { get; init; } = [];
    /// <summary>null: not given (the adapter's weights decide which modules are adapted).</summary>
    public ModuleSelector? TargetModules { get; init; }
    public ModuleSelector? ExcludeModules { get; init; }
    public IReadOnlyList<int>? LayersToTransform { get; init; }
    public bool LoraBias { get; init; }
    public bool FanInFanOut { get; init; }
    public bool UseDora { get; init; }
    public bool UseKasa { get; init; }
    /// <summary>"peft" or "official" when the config says (kasa_config.truncation); null otherwise.</summary>
    public string? KasaTruncation { get; init; }

    /// <summary>r of one module: the first matching rank_pattern key, else r.</summary>
    public int RankFor(string modulePath) =>
        PeftPatterns.FirstMatch(RankPattern, modulePath, out var rank) ? rank : R;

    /// <summary>alpha of one module: the first matching alpha_pattern key, else lora_alpha.</summary>
    public double AlphaFor(string modulePath) =>
        PeftPatterns.FirstMatch(AlphaPattern, modulePath, out var alpha) ? alpha : LoraAlpha;

    /// <summary>s = alpha/r, or alpha/√r with rsLoRA, with the module's own rank and alpha.</summary>
    public double ScalingFor(string modulePath, int rank)
    {
        double alpha = AlphaFor(modulePath);
        return UseRslora ? alpha / Math.Sqrt(rank) : alpha / rank;
    }

    /// <summary>Does the config select this module (target_modules, exclude_modules, layers_to_transform)?</summary>
    public bool Targets(string modulePath, int layer) =>
        (TargetModules?.Matches(modulePath) ?? true)
        && !(ExcludeModules?.Matches(modulePath) ?? false)
        && (LayersToTransform is null || LayersToTransform.Contains(layer));

    private static readonly string[] BaseModifyingInits = ["pissa", "olora", "corda", "loftq", "mica"];

    /// <summary>Variant configs this server knows and may accept (others, when non-null, are refused).</summary>
    private static readonly HashSet<string> KnownConfigFields = ["runtime_config", "eva_config", "loftq_config", "corda_config",
        "megatron_config", "kasa_config", "arrow_config", "qalora_config"];

    /// <summary>Boolean switches this server knows; an unknown <c>use_*</c> set to true is refused.</summary>
    private static readonly HashSet<string> KnownUseFlags = ["use_rslora", "use_dora", "use_kasa", "use_qalora"];

    public static PeftLoraConfig Load(string path) => Parse(LoadObject(path, FileName));

    public static PeftLoraConfig Parse(JsonObject o)
    {
        string peftType = OptionalString(o, "peft_type") ?? throw Invalid($"{FileName}: field 'peft_type' is missing (expected \"LORA\")");
        if (!peftType.Equals("LORA", StringComparison.OrdinalIgnoreCase))
            throw Unsupported($"{FileName}: peft_type '{peftType}' is not supported (supported: LORA)");

        RefuseUnsupported(o);

        int r = OptionalInt(o, "r") ?? 8;
        if (r <= 0) throw Invalid($"{FileName}: field 'r' must be a positive integer (got {r})");
        double alpha = OptionalNumber(o, "lora_alpha") ?? 8;
        if (!double.IsFinite(alpha)) throw Invalid($"{FileName}: field 'lora_alpha' must be a finite number");

        var rankPattern = Patterns(o, "rank_pattern", (key, v) =>
        {
            int rank = v is JsonValue jv && jv.TryGetValue<int>(out int i) ? i
                : throw Invalid($"{FileName}: rank_pattern['{key}'] must be a positive integer (got {v?.ToJsonString() ?? "null"})");
            if (rank <= 0) throw Invalid($"{FileName}: rank_pattern['{key}'] must be a positive integer (got {rank})");
            return rank;
        });
        var alphaPattern = Patterns(o, "alpha_pattern", (key, v) =>
            v is JsonValue jv && jv.TryGetValue<double>(out double d) && double.IsFinite(d) ? d
                : throw Invalid($"{FileName}: alpha_pattern['{key}'] must be a number (got {v?.ToJsonString() ?? "null"})"));

        var target = Selector(o, "target_modules");
        var exclude = Selector(o, "exclude_modules");
        var layers = Layers(o, target);

        string bias = OptionalString(o, "bias") ?? "none";
        if (bias != "none")
            throw Unsupported($"{FileName}: bias '{bias}' trains the base model's own biases; only \"none\" is supported (the base stays shared and frozen)");

        bool useDora = OptionalBool(o, "use_dora") ?? false;
        bool loraBias = OptionalBool(o, "lora_bias") ?? false;
        bool useKasa = (OptionalBool(o, "use_kasa") ?? false) || o["kasa_config"] is not null;
        string? truncation = null;
        if (o["kasa_config"] is JsonObject kasa && kasa["truncation"] is { } t)
        {
            truncation = t is JsonValue tv && tv.TryGetValue<string>(out var s) ? s : null;
            if (truncation is not ("peft" or "official"))
                throw Invalid($"{FileName}: kasa_config.truncation must be \"peft\" or \"official\" (got {t.ToJsonString()})");
        }
        if (useDora && useKasa) throw Unsupported($"{FileName}: use_dora together with KaSA is not supported");
        if (useDora && loraBias) throw Unsupported($"{FileName}: lora_bias together with use_dora is not supported (PEFT refuses it too)");

        return new PeftLoraConfig
        {
            R = r,
            LoraAlpha = alpha,
            UseRslora = OptionalBool(o, "use_rslora") ?? false,
            RankPattern = rankPattern,
            AlphaPattern = alphaPattern,
            TargetModules = target,
            ExcludeModules = exclude,
            LayersToTransform = layers,
            LoraBias = loraBias,
            // PEFT forces fan_in_fan_out to false for torch.nn.Linear (every Llama projection); it never changes
            // the lora_A/lora_B shapes, so the served adapter is the same either way.
            FanInFanOut = false,
            UseDora = useDora,
            UseKasa = useKasa,
            KasaTruncation = truncation,
        };
    }

    private static void RefuseUnsupported(JsonObject o)
    {
        if (o["init_lora_weights"] is JsonValue init && init.TryGetValue<string>(out var initName))
        {
            string lower = initName.ToLowerInvariant();
            if (BaseModifyingInits.Any(lower.StartsWith))
                throw Unsupported($"{FileName}: init_lora_weights '{initName}' is not supported: it changes the base model's weights, which stay shared and frozen here");
        }
        if (IsSet(o["modules_to_save"]))
            throw Unsupported($"{FileName}: modules_to_save ({o["modules_to_save"]!.ToJsonString()}) holds full copies of base modules; such adapters are not supported");
        if (IsSet(o["layer_replication"]))
            throw Unsupported($"{FileName}: layer_replication is not supported (it changes the base model's layer stack)");
        if (IsSet(o["megatron_config"]))
            throw Unsupported($"{FileName}: megatron_config is not supported (Megatron parallel layers)");
        if (IsSet(o["trainable_token_indices"]))
            throw Unsupported($"{FileName}: trainable_token_indices is not supported (it trains rows of the base embeddings)");
        if (IsSet(o["target_parameters"]))
            throw Unsupported($"{FileName}: target_parameters is not supported (LoRA on raw parameters)");
        if (IsSet(o["alora_invocation_tokens"]))
            throw Unsupported($"{FileName}: alora_invocation_tokens (activated LoRA) is not supported");
        if (OptionalBool(o, "use_qalora") == true)
            throw Unsupported($"{FileName}: use_qalora is not supported (quantization-aware LoRA)");
        if (IsSet(o["corda_config"]))
            throw Unsupported($"{FileName}: corda_config is not supported (CorDA changes the base model's weights)");
        if (IsSet(o["loftq_config"]))
            throw Unsupported($"{FileName}: loftq_config is not supported (LoftQ changes the base model's weights)");
        if (IsSet(o["arrow_config"]))
            throw Unsupported($"{FileName}: arrow_config is not supported (Arrow routing over several LoRAs)");

        foreach (var (key, value) in o)
        {
            if (key.EndsWith("_config", StringComparison.Ordinal) && !KnownConfigFields.Contains(key) && IsSet(value))
                throw Unsupported($"{FileName}: '{key}' is a variant this server does not know; refusing rather than serving it wrongly");
            if (key.StartsWith("use_", StringComparison.Ordinal) && !KnownUseFlags.Contains(key) && value is JsonValue v && v.TryGetValue<bool>(out bool on) && on)
                throw Unsupported($"{FileName}: '{key}: true' is a variant this server does not know; refusing rather than serving it wrongly");
        }
    }
}
