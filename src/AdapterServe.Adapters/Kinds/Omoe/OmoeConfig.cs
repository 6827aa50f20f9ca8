using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Store;

namespace AdapterServe.Adapters.Kinds.Omoe;

/// <summary>
/// An OMoE <c>adapter_config.json</c> (methods.md §4.2): <c>{"peft_type": "OMOE", "num_experts": 4, "r": 16,
/// "lora_alpha": 32, "top_k": null, "rescale": "norm", "eps": 1e-6, "target_modules": [...]}</c>, with the weights in
/// <c>adapter_model.safetensors</c> (<c>m.omoe_A.{i} [r, d_in]</c>, <c>m.omoe_B.{i} [d_out, r]</c>,
/// <c>m.omoe_router.weight [n, d_in]</c>). Read strictly: unknown fields are refused with a 400 naming them.
/// </summary>
public sealed record OmoeConfig(int NumExperts, int R, double LoraAlpha, int? TopK, bool RescaleNorm, double Eps, ModuleSelector? TargetModules)
{
    public const string PeftType = "OMOE";
    public const string FileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";

    /// <summary>s = lora_alpha / r.</summary>
    public double Scaling => LoraAlpha / R;

    public static OmoeConfig Load(string path) => Parse(MixtureConfigFields.Load(path, FileName));

    internal static OmoeConfig Parse(MixtureConfigFields fields)
    {
        string peftType = fields.String("peft_type") ?? throw fields.Field("peft_type", $"is missing (expected \"{PeftType}\")");
        if (!peftType.Equals(PeftType, StringComparison.OrdinalIgnoreCase))
            throw fields.Field("peft_type", $"is '{peftType}', expected \"{PeftType}\"");

        int n = fields.Int("num_experts") ?? throw fields.Field("num_experts", "is missing (the number of LoRA experts per module)");
        if (n < 1) throw fields.Field("num_experts", $"must be at least 1 (got {n})");
        int r = fields.Int("r") ?? 16;
        if (r < 1) throw fields.Field("r", $"must be a positive integer (got {r})");
        double alpha = fields.Number("lora_alpha") ?? 32;
        int? topK = fields.Int("top_k");
        if (topK is { } k && (k < 1 || k > n))
            throw fields.Field("top_k", $"is {k}; it must be null or between 1 and num_experts ({n})");
        string rescale = fields.String("rescale") ?? "norm";
        if (rescale is not ("norm" or "none")) throw fields.Field("rescale", $"is '{rescale}'; expected \"norm\" or \"none\"");
        double eps = fields.Number("eps") ?? 1e-6;
        if (eps < 0) throw fields.Field("eps", $"must be ≥ 0 (got {eps})");
        var target = fields.Selector("target_modules");
        fields.RefuseUnread(PeftType);
        return new OmoeConfig(n, r, alpha, topK, rescale == "norm", eps, target);
    }
}
