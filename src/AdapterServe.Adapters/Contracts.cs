using AdapterServe.Modeling;

namespace AdapterServe.Adapters;

/// <summary>Adapter kinds this build serves. Later issues add Kronecker and per-token mixture kinds.</summary>
public enum AdapterKind { Lora, Dora, Kasa }

/// <summary>One adapted projection of one layer, as validated from the adapter's config and safetensors header.</summary>
/// <param name="Rank">r of this module (from the lora_A shape; rank_pattern applied).</param>
/// <param name="Scaling">s = alpha/r, or alpha/√r with rsLoRA (alpha_pattern applied).</param>
/// <param name="TensorPrefix">Key prefix in adapter_model.safetensors, e.g. <c>base_model.model.model.layers.0.self_attn.q_proj</c>.</param>
public sealed record AdapterModuleSpec(int Layer, Projection Projection, int Rank, double Scaling, bool HasBias, bool HasMagnitude, bool HasDiag, string TensorPrefix);

/// <summary>What a validated adapter directory holds. Plain data: no tensors.</summary>
/// <param name="KasaTruncation">"peft" (keep k − r components, default) or "official" (keep d_in − r).</param>
public sealed record AdapterDescription(
    AdapterKind Kind,
    IReadOnlyList<AdapterModuleSpec> Modules,
    bool FanInFanOut,
    string KasaTruncation,
    long WeightBytes)
{
    public int MaxRank => Modules.Count == 0 ? 0 : Modules.Max(m => m.Rank);
    public IReadOnlyList<string> TargetModules => Modules.Select(m => m.Projection.ShortName()).Distinct().ToList();
}

/// <summary>One stored version of a named adapter. Immutable; the registry swaps whole snapshots of these.</summary>
public sealed record AdapterRecord(
    string Name,
    int Version,
    string Directory,
    AdapterDescription Description,
    string ContentHash,
    string Source,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt);

/// <summary>A bad adapter: maps to HTTP 400 (or 413 for size) with this message, naming the file/tensor at fault.</summary>
public sealed class AdapterValidationException(string message, string code = "invalid_adapter", int statusCode = 400) : Exception(message)
{
    public string Code { get; } = code;
    public int StatusCode { get; } = statusCode;
}

public enum ResidencyTier { Stored, Host, Device }

/// <summary>Runtime state of one adapter name, as the residency cache sees it. Plain data for the API.</summary>
public sealed record AdapterRuntimeStatus(ResidencyTier Tier, bool Pinned, long LoadCount, DateTimeOffset? LastUsed, int ActiveSequences, long ResidentBytes);

/// <summary>
/// What the store and the HTTP layer may ask of the residency cache (implemented in the Adapters room by the
/// cache; the engine holds leases through it). No tensors cross this interface.
/// </summary>
public interface IAdapterResidency
{
    AdapterRuntimeStatus Status(string name);
    void SetPinned(string name, bool pinned);
    /// <summary>Number of running sequences using any version of <paramref name="name"/>.</summary>
    int ActiveSequences(string name);
    /// <summary>Completes when no running sequence uses <paramref name="name"/>.</summary>
    Task WaitUntilUnusedAsync(string name, CancellationToken cancellationToken);
    /// <summary>Drops cached weights of versions of <paramref name="name"/> that no sequence uses (after delete or replace).</summary>
    void Forget(string name);
}
