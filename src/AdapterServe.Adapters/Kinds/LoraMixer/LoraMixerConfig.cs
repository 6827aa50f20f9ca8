using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Store;

namespace AdapterServe.Adapters.Kinds.LoraMixer;

/// <summary>
/// A LoRA-Mixer's <c>adapter_config.json</c> (methods.md §4.1):
/// <c>{"peft_type": "LORA_MIXER", "experts": ["a", "b", ...], "top_k": 3, "renormalize": true, "target_modules": [...]}</c>.
/// Experts are LoRA adapters named in the registry or embedded under <c>experts/&lt;name&gt;/</c>; the routers are in
/// <c>mixer_model.safetensors</c>. Read strictly: unknown fields are refused with a 400 naming them.
/// </summary>
public sealed record LoraMixerConfig(IReadOnlyList<string> Experts, int TopK, bool Renormalize, ModuleSelector? TargetModules)
{
    public const string PeftType = "LORA_MIXER";
    public const string FileName = "adapter_config.json";
    public const string RouterFileName = "mixer_model.safetensors";
    public const string ExpertsFolder = "experts";
    /// <summary>The paper's K.</summary>
    public const int DefaultTopK = 3;

    public static LoraMixerConfig Load(string path) => Parse(MixtureConfigFields.Load(path, FileName));

    internal static LoraMixerConfig Parse(MixtureConfigFields fields)
    {
        string peftType = fields.String("peft_type") ?? throw fields.Field("peft_type", $"is missing (expected \"{PeftType}\")");
        if (!peftType.Equals(PeftType, StringComparison.OrdinalIgnoreCase))
            throw fields.Field("peft_type", $"is '{peftType}', expected \"{PeftType}\"");

        var experts = fields.Strings("experts") ?? throw fields.Field("experts", "is missing (a list of LoRA adapter names)");
        if (experts.Count == 0) throw fields.Field("experts", "is empty (a mixer needs at least one expert)");
        foreach (var name in experts)
            if (AdapterName.Problem(name) is { } problem) throw fields.Field("experts", $"holds a bad name: {problem}");
        if (experts.Distinct(StringComparer.Ordinal).Count() != experts.Count)
            throw fields.Field("experts", $"names an expert twice ({string.Join(", ", experts.GroupBy(e => e).Where(g => g.Count() > 1).Select(g => g.Key))})");

        int topK = fields.Int("top_k") ?? Math.Min(DefaultTopK, experts.Count);
        if (topK < 1 || topK > experts.Count)
            throw fields.Field("top_k", $"is {topK}; it must be between 1 and the number of experts ({experts.Count})");
        bool renormalize = fields.Bool("renormalize") ?? true;
        var target = fields.Selector("target_modules");
        fields.RefuseUnread("LORA_MIXER");
        return new LoraMixerConfig(experts, topK, renormalize, target);
    }
}
