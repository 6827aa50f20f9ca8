using System.Globalization;
using System.Text.Json.Nodes;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Store;
using static AdapterServe.Adapters.Kinds.PeftConfigReader;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>How a sub-layer's router turns gate logits into selected experts and weights (methods.md §4.3).</summary>
public enum SmoreGateType
{
    /// <summary>Softmax over all experts, top-f, renormalised when f &gt; 1.</summary>
    Switch,
    /// <summary>Cosine logits (L2-normalised query and keys), no noise at inference, top-f logits then softmax (f = 1: the raw logit).</summary>
    NoisyTopK,
    /// <summary>Softmax over all experts, every expert used (num_active is not used, as in the official code).</summary>
    Dense,
}

/// <summary>σ between S'MoRE sub-layers (<c>expert_act_fn</c>) or inside a router MLP (<c>gate_act_fn</c>).</summary>
public enum SmoreActivation { Identity, Tanh, Relu, Prelu }

/// <summary>Where σ is applied when a parent combines its children (<c>activation_position</c> of the official code).</summary>
public enum SmoreActivationPosition
{
    /// <summary><c>x_{l+1} = Σ α σ(u + W x_l + w)</c>; leaf <c>Σ α σ(u)</c> (the paper's form, the default).</summary>
    All,
    /// <summary><c>x_{l+1} = Σ (α u + W σ(x_l) + w)</c>; leaf <c>Σ α u</c>.</summary>
    Child,
    /// <summary><c>x_{l+1} = Σ α (u + W σ(x_l) + w)</c>; leaf <c>Σ α u</c>.</summary>
    ChildV2,
}

/// <summary>
/// The <c>adapter_config.json</c> of an S'MoRE adapter in the official fork's format (<c>"peft_type": "HIER_MOE"</c>,
/// <c>"moe_arch": "smore"</c>), read strictly: every field of that config is either honoured or refused with a 400
/// naming it, and fields the fork does not have are refused too. Lists are indexed by sub-layer, 0 = leaf.
/// </summary>
public sealed record SmoreConfig
{
    public const string FileName = "adapter_config.json";
    public const string PeftType = "HIER_MOE";

    /// <summary>At most this many sub-layers, and at most this many routed paths per token (Π fan-outs).</summary>
    public const int MaxLevels = 8;
    public const int MaxPathsPerToken = 4096;

    /// <summary><c>num_experts</c>: s_l.</summary>
    public required IReadOnlyList<int> NumExperts { get; init; }
    /// <summary><c>num_active</c>: f_l.</summary>
    public required IReadOnlyList<int> NumActive { get; init; }
    /// <summary><c>expert_dims</c>: r_l.</summary>
    public required IReadOnlyList<int> ExpertDims { get; init; }
    /// <summary><c>gate_dims</c>: d_g of each sub-layer's router (a one-element list applies to every sub-layer).</summary>
    public required IReadOnlyList<int> GateDims { get; init; }
    /// <summary><c>lora_alpha</c> per sub-layer, or null (every scaling 1.0).</summary>
    public IReadOnlyList<double>? LoraAlpha { get; init; }
    /// <summary><c>dim_downproj_x</c>; null or ≤ 0 means d_in (the router still down-projects, d_in → d_in).</summary>
    public int? DimDownprojX { get; init; }
    public SmoreGateType GateType { get; init; } = SmoreGateType.NoisyTopK;
    public SmoreActivation GateActivation { get; init; } = SmoreActivation.Relu;
    public SmoreActivation ExpertActivation { get; init; } = SmoreActivation.Relu;
    public SmoreActivationPosition ActivationPosition { get; init; } = SmoreActivationPosition.All;
    public ModuleSelector? TargetModules { get; init; }
    public ModuleSelector? ExcludeModules { get; init; }
    public IReadOnlyList<int>? LayersToTransform { get; init; }

    /// <summary>L, the number of sub-layers.</summary>
    public int Levels => NumExperts.Count;

    /// <summary>sc_l = lora_alpha_l / r_l, or 1.0 when lora_alpha is null.</summary>
    public double Scaling(int level) => LoraAlpha is null ? 1.0 : LoraAlpha[level] / ExpertDims[level];

    /// <summary>Children selected per parent path at sub-layer l: f_l, or s_l for the dense gate.</summary>
    public int FanOut(int level) => GateType == SmoreGateType.Dense ? NumExperts[level] : NumActive[level];

    /// <summary>Routed paths per token that reach sub-layer l: Π_{l' ≥ l} fan-out.</summary>
    public int PathsAt(int level)
    {
        int paths = 1;
        for (int l = level; l < Levels; l++) paths *= FanOut(l);
        return paths;
    }

    /// <summary>Width of the router's down-projection for a projection with <paramref name="dIn"/> inputs.</summary>
    public int DownDim(int dIn) => DimDownprojX is > 0 and int d ? d : dIn;

    /// <summary>Does the config select this module (target_modules, exclude_modules, layers_to_transform)?</summary>
    public bool Targets(string modulePath, int layer) =>
        (TargetModules?.Matches(modulePath) ?? true)
        && !(ExcludeModules?.Matches(modulePath) ?? false)
        && (LayersToTransform is null || LayersToTransform.Contains(layer));

    /// <summary>True when <paramref name="config"/> is an S'MoRE config (<c>peft_type</c> HIER_MOE), whatever else it says.</summary>
    public static bool IsSmore(JsonObject config) =>
        config["peft_type"] is JsonValue v && v.TryGetValue<string>(out var t) && t.Equals(PeftType, StringComparison.OrdinalIgnoreCase);

    /// <summary>Fields of the fork's HieRMoEConfig and PEFT's base config; anything else is refused.</summary>
    private static readonly HashSet<string> KnownFields =
    [
        "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
        "target_modules", "exclude_modules", "moe_arch", "num_experts", "num_active", "expert_dims", "lora_alpha", "lora_scaling",
        "gate_dims", "gate_act_fn", "gate_type", "gate_arch", "layer_forward_mode", "balance_loss_weight", "expert_act_fn",
        "init_method", "is_shared_expert_pool", "activation_position", "dim_downproj_x", "moe_dropout", "modules_to_save",
        "init_moe_weights", "layers_to_transform", "bias",
    ];

    private static readonly HashSet<string> InitMethods = ["normal", "b_zero", "bw_zero", "w_final_zero", "eq_1_layer"];

    public static SmoreConfig Load(string path) => Parse(LoadObject(path, FileName));

    public static SmoreConfig Parse(JsonObject o)
    {
        string peftType = OptionalString(o, "peft_type") ?? throw Invalid($"{FileName}: field 'peft_type' is missing (expected \"{PeftType}\")");
        if (!peftType.Equals(PeftType, StringComparison.OrdinalIgnoreCase))
            throw Invalid($"{FileName}: field 'peft_type' is '{peftType}', not \"{PeftType}\"");
        foreach (var (key, _) in o)
            if (!KnownFields.Contains(key))
                throw Unsupported($"{FileName}: field '{key}' is not part of the S'MoRE (HIER_MOE) config; refusing rather than serving it wrongly");

        string arch = OptionalString(o, "moe_arch") ?? "llama_moe";
        if (arch != "smore")
            throw Unsupported($"{FileName}: field 'moe_arch' is '{arch}'; only \"smore\" is served for peft_type {PeftType}");

        var numExperts = IntList(o, "num_experts", [8]);
        int levels = numExperts.Count;
        if (levels < 1 || levels > MaxLevels)
            throw Invalid($"{FileName}: field 'num_experts' must list 1 to {MaxLevels} sub-layers (got {levels})");
        var numActive = IntList(o, "num_active", [2]);
        var expertDims = IntList(o, "expert_dims", [512]);
        if (numActive.Count != levels)
            throw Invalid($"{FileName}: field 'num_active' has {numActive.Count} entries but num_experts has {levels} (one per sub-layer)");
        if (expertDims.Count != levels)
            throw Invalid($"{FileName}: field 'expert_dims' has {expertDims.Count} entries but num_experts has {levels} (one per sub-layer)");
        var gateDims = IntList(o, "gate_dims", [32]);
        if (gateDims.Count == 1 && levels > 1) gateDims = Enumerable.Repeat(gateDims[0], levels).ToList();
        if (gateDims.Count != levels)
            throw Invalid($"{FileName}: field 'gate_dims' has {gateDims.Count} entries; expected 1 or {levels} (one per sub-layer)");
        for (int l = 0; l < levels; l++)
        {
            Positive(numExperts[l], "num_experts", l);
            Positive(numActive[l], "num_active", l);
            Positive(expertDims[l], "expert_dims", l);
            Positive(gateDims[l], "gate_dims", l);
        }

        var gateType = (OptionalString(o, "gate_type") ?? "noisy_topk") switch
        {
            "switch" => SmoreGateType.Switch,
            "noisy_topk" => SmoreGateType.NoisyTopK,
            "dense" => SmoreGateType.Dense,
            var other => throw Unsupported($"{FileName}: field 'gate_type' is '{other}'; known gate types: switch, noisy_topk, dense"),
        };
        if (gateType != SmoreGateType.Dense)
            for (int l = 0; l < levels; l++)
                if (numActive[l] > numExperts[l])
                    throw Invalid($"{FileName}: field 'num_active' [{l}] = {numActive[l]} selects more experts than sub-layer {l} has (num_experts [{l}] = {numExperts[l]})");

        IReadOnlyList<double>? alpha = o["lora_alpha"] is null ? null : NumberList(o, "lora_alpha");
        if (alpha is not null && alpha.Count != levels)
            throw Invalid($"{FileName}: field 'lora_alpha' has {alpha.Count} entries but num_experts has {levels} (null, or one per sub-layer)");
        if (o["lora_scaling"] is not null)
        {
            var declared = NumberList(o, "lora_scaling");
            for (int l = 0; l < levels; l++)
            {
                double served = alpha is null ? 1.0 : alpha[l] / expertDims[l];
                if (declared.Count != levels || Math.Abs(declared[l] - served) > 1e-6 * Math.Max(1.0, Math.Abs(served)))
                    throw Invalid($"{FileName}: field 'lora_scaling' ({o["lora_scaling"]!.ToJsonString()}) disagrees with the scaling the official code uses " +
                        $"(lora_alpha / expert_dims, or 1.0 when lora_alpha is null: {served.ToString(CultureInfo.InvariantCulture)} for sub-layer {l})");
            }
        }

        string gateArch = OptionalString(o, "gate_arch") ?? "mlp";
        if (gateArch != "mlp")
            throw Unsupported($"{FileName}: field 'gate_arch' is '{gateArch}'; only \"mlp\" routers are served");
        var gateAct = Activation(o, "gate_act_fn", "relu");
        var expertAct = Activation(o, "expert_act_fn", "relu");
        var position = (OptionalString(o, "activation_position") ?? "all") switch
        {
            "all" => SmoreActivationPosition.All,
            "child" => SmoreActivationPosition.Child,
            "child_v2" => SmoreActivationPosition.ChildV2,
            var other => throw Unsupported($"{FileName}: field 'activation_position' is '{other}'; known: all, child, child_v2"),
        };

        string mode = OptionalString(o, "layer_forward_mode") ?? "subgraph";
        if (mode is not ("subgraph" or "tree" or "loop"))
            throw Unsupported($"{FileName}: field 'layer_forward_mode' is '{mode}'; known: subgraph, tree, loop");
        if (mode == "loop" && (levels != 1 || expertAct != SmoreActivation.Identity))
            throw Unsupported($"{FileName}: field 'layer_forward_mode' \"loop\" exists in the official code only for one sub-layer with expert_act_fn \"identity\"");

        if (OptionalBool(o, "is_shared_expert_pool") == true)
            throw Unsupported($"{FileName}: field 'is_shared_expert_pool' true (one expert pool shared by all sub-layers) is not supported");

        string init = OptionalString(o, "init_method") ?? "b_zero";
        if (!InitMethods.Contains(init))
            throw Unsupported($"{FileName}: field 'init_method' is '{init}'; known: {string.Join(", ", InitMethods)}");
        switch (o["init_moe_weights"])
        {
            case null: break;
            case JsonValue v when v.TryGetValue<bool>(out _): break;
            case JsonValue v when v.TryGetValue<string>(out var s) && s == "gaussian": break;
            case var other:
                throw Unsupported($"{FileName}: field 'init_moe_weights' is {other.ToJsonString()}; only true, false or \"gaussian\" (initialisations that leave the base model unchanged) are served");
        }

        double balance = OptionalNumber(o, "balance_loss_weight") ?? 1e-2;
        if (!double.IsFinite(balance)) throw Invalid($"{FileName}: field 'balance_loss_weight' must be a finite number");
        double dropout = OptionalNumber(o, "moe_dropout") ?? 0.0;
        if (!(dropout >= 0 && dropout < 1)) throw Invalid($"{FileName}: field 'moe_dropout' must be in [0, 1) (got {dropout.ToString(CultureInfo.InvariantCulture)})");

        string bias = OptionalString(o, "bias") ?? "none";
        if (bias != "none")
            throw Unsupported($"{FileName}: field 'bias' is '{bias}': it trains the base model's own biases; only \"none\" is supported (the base stays shared and frozen)");
        if (IsSet(o["modules_to_save"]))
            throw Unsupported($"{FileName}: field 'modules_to_save' ({o["modules_to_save"]!.ToJsonString()}) holds full copies of base modules; such adapters are not supported");
        _ = OptionalString(o, "task_type");
        _ = OptionalString(o, "base_model_name_or_path");
        _ = OptionalString(o, "revision");
        _ = OptionalBool(o, "inference_mode");

        var target = Selector(o, "target_modules");
        var exclude = Selector(o, "exclude_modules");
        var layers = Layers(o, target);

        int? down = o["dim_downproj_x"] is null ? null : OptionalInt(o, "dim_downproj_x");

        var config = new SmoreConfig
        {
            NumExperts = numExperts,
            NumActive = numActive,
            ExpertDims = expertDims,
            GateDims = gateDims,
            LoraAlpha = alpha,
            DimDownprojX = down,
            GateType = gateType,
            GateActivation = gateAct,
            ExpertActivation = expertAct,
            ActivationPosition = position,
            TargetModules = target,
            ExcludeModules = exclude,
            LayersToTransform = layers,
        };
        if (config.PathsAt(0) > MaxPathsPerToken)
            throw Unsupported($"{FileName}: fields 'num_active'/'gate_type' route {config.PathsAt(0)} paths per token through the tree (at most {MaxPathsPerToken} are served)");
        return config;
    }

    private static SmoreActivation Activation(JsonObject o, string field, string fallback)
    {
        string name = OptionalString(o, field) ?? fallback;
        if (name.StartsWith("prelu", StringComparison.Ordinal))
        {
            // "prelu|<init>": the init only matters for training; the learned slope is a tensor of the file.
            string rest = name["prelu".Length..];
            if (rest.Length == 0 || (rest[0] == '|' && double.TryParse(rest[1..], NumberStyles.Float, CultureInfo.InvariantCulture, out _)))
                return SmoreActivation.Prelu;
        }
        return name switch
        {
            "identity" => SmoreActivation.Identity,
            "tanh" => SmoreActivation.Tanh,
            "relu" => SmoreActivation.Relu,
            _ => throw Unsupported($"{FileName}: field '{field}' is '{name}'; known activations: identity, tanh, relu, prelu|<init>"),
        };
    }

    private static void Positive(int value, string field, int level)
    {
        if (value < 1) throw Invalid($"{FileName}: field '{field}' [{level}] must be a positive integer (got {value})");
        if (value > 1 << 20) throw Invalid($"{FileName}: field '{field}' [{level}] = {value} is too large");
    }

    private static List<int> IntList(JsonObject o, string field, List<int> fallback) => o[field] switch
    {
        null => fallback,
        JsonValue v => [Int(v, $"field '{field}'")],
        JsonArray a => a.Select(x => Int(x, $"field '{field}' (a list of integers): each item")).ToList(),
        var other => throw Invalid($"{FileName}: field '{field}' must be a list of integers (got {other.ToJsonString()})"),
    };

    private static List<double> NumberList(JsonObject o, string field) => o[field] switch
    {
        JsonArray a => a.Select(x => x is JsonValue jv && jv.TryGetValue<double>(out double d) && double.IsFinite(d) ? d
            : throw Invalid($"{FileName}: field '{field}' must be a list of finite numbers (got {x?.ToJsonString() ?? "null"} in it)")).ToList(),
        var other => throw Invalid($"{FileName}: field '{field}' must be null or a list of numbers, one per sub-layer (got {other?.ToJsonString() ?? "null"})"),
    };
}
