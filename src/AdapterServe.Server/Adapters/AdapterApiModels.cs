using System.Text.Json;
using System.Text.Json.Serialization;
using AdapterServe.Adapters;
using AdapterServe.Modeling;

namespace AdapterServe.Server.Adapters;

/// <summary>One adapter as the API shows it (snake_case JSON). Timestamps are Unix seconds.</summary>
public sealed record AdapterInfo(
    string Id,
    string Object,
    string Name,
    string Kind,
    int Rank,
    [property: JsonPropertyName("target_modules")] IReadOnlyList<string> TargetModules,
    long Bytes,
    int Version,
    [property: JsonPropertyName("content_hash")] string ContentHash,
    string Status,
    bool Pinned,
    [property: JsonPropertyName("load_count")] long LoadCount,
    [property: JsonPropertyName("last_used")] long? LastUsed,
    [property: JsonPropertyName("active_sequences")] int ActiveSequences,
    [property: JsonPropertyName("resident_bytes")] long ResidentBytes,
    string Source,
    [property: JsonPropertyName("created_at")] long CreatedAt,
    [property: JsonPropertyName("updated_at")] long UpdatedAt,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] IReadOnlyList<AdapterModuleInfo>? Modules = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] IReadOnlyList<string>? Experts = null,
    [property: JsonPropertyName("top_k"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int? TopK = null,
    [property: JsonPropertyName("depends_on"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] IReadOnlyList<string>? DependsOn = null)
{
    public static AdapterInfo From(AdapterRecord record, AdapterRuntimeStatus status, bool withModules = false) => new(
        record.Name, "adapter", record.Name, record.Description.Kind.ToString().ToLowerInvariant(), record.Description.MaxRank,
        record.Description.TargetModules, record.Description.WeightBytes, record.Version, record.ContentHash,
        status.Tier.ToString().ToLowerInvariant(), status.Pinned, status.LoadCount, status.LastUsed?.ToUnixTimeSeconds(),
        status.ActiveSequences, status.ResidentBytes, record.Source, record.CreatedAt.ToUnixTimeSeconds(), record.UpdatedAt.ToUnixTimeSeconds(),
        withModules ? record.Description.ModuleSummaries.Select(AdapterModuleInfo.From).ToList() : null,
        record.Description.Experts, record.Description.TopK, record.Description.DependsOn is { Count: > 0 } d ? d : null);
}

/// <summary>
/// <c>GET /v1/adapters/{name}/experts</c>: where a mixture's tokens went, per module, since start.
/// <c>load_balance_window_steps</c> is the window of each module's <c>window_load_balance</c> (and of the Prometheus gauge).
/// </summary>
public sealed record AdapterExperts(
    string Object,
    string Adapter,
    string Kind,
    IReadOnlyList<string> Experts,
    [property: JsonPropertyName("top_k")] int? TopK,
    [property: JsonPropertyName("load_balance_window_steps")] int LoadBalanceWindowSteps,
    IReadOnlyList<AdapterServe.Adapters.Experts.ExpertModuleUsage> Modules);

/// <summary>One adapted projection of one layer; the adapter's kind adds its own fields (LoRA: scaling, bias, magnitude, diag).</summary>
public sealed record AdapterModuleInfo(int Layer, string Module, int Rank)
{
    /// <summary>The kind's own fields, written next to the others.</summary>
    [JsonExtensionData]
    public IDictionary<string, object>? Details { get; init; }

    public static AdapterModuleInfo From(AdapterModuleSummary m) =>
        new(m.Layer, m.Projection.ShortName(), m.Rank) { Details = new Dictionary<string, object>(m.Details) };
}

public sealed record AdapterList(string Object, IReadOnlyList<AdapterInfo> Data);

public sealed record AdapterDeleted(string Id, string Object, bool Deleted);

/// <summary>vLLM's <c>POST /v1/load_lora_adapter</c> body.</summary>
public sealed record LoadLoraAdapterRequest(
    [property: JsonPropertyName("lora_name")] string? LoraName,
    [property: JsonPropertyName("lora_path")] string? LoraPath,
    [property: JsonPropertyName("load_inplace")] bool LoadInplace = false);

/// <summary>vLLM's <c>POST /v1/unload_lora_adapter</c> body.</summary>
public sealed record UnloadLoraAdapterRequest([property: JsonPropertyName("lora_name")] string? LoraName);

/// <summary>OpenAI error body: <c>{"error":{"message","type","param","code"}}</c>.</summary>
public sealed record ApiError(ApiErrorBody Error);

public sealed record ApiErrorBody(string Message, string Type, string? Param, string? Code);

/// <summary>The multipart form of <c>POST /v1/adapters</c> (documentation only: the endpoint streams the parts itself).</summary>
public sealed class AdapterUploadForm
{
    /// <summary>Adapter name: letters, digits, '-', '_', '.'; at most 128 characters.</summary>
    [JsonPropertyName("name")] public string Name { get; set; } = "";
    /// <summary>A .zip or .tar.gz of the PEFT adapter folder (files at the root or inside one top folder).</summary>
    [JsonPropertyName("file")] public IFormFile? File { get; set; }
    /// <summary>Instead of an archive: the loose adapter_config.json.</summary>
    [JsonPropertyName("adapter_config.json")] public IFormFile? AdapterConfig { get; set; }
    /// <summary>Instead of an archive: the loose adapter_model.safetensors.</summary>
    [JsonPropertyName("adapter_model.safetensors")] public IFormFile? AdapterModel { get; set; }
}

internal static class AdapterJson
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };
}
