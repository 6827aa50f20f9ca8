using AdapterServe.Modeling;

namespace AdapterServe.Adapters;

/// <summary>
/// The name of an adapter kind as the API and the manifest show it (<c>lora</c>, <c>dora</c>, <c>kasa</c>, ...). A kind
/// handler (<see cref="IAdapterKindHandler"/>) may serve several names; each kind's folder under <c>Kinds/</c> declares
/// its own names as static members of this type.
/// </summary>
public readonly partial record struct AdapterKind(string Name)
{
    public override string ToString() => Name;
}

/// <summary>One adapted projection of one layer as the API lists it: kind-neutral fields plus the kind's own.</summary>
/// <param name="Details">Kind-specific plain values (numbers, booleans, strings) rendered as extra fields.</param>
public sealed record AdapterModuleSummary(int Layer, Projection Projection, int Rank, IReadOnlyDictionary<string, object> Details);

/// <summary>
/// What a validated adapter directory holds, as its kind described it. Plain data: no tensors. The kind-neutral members
/// are all the store, the registry and the Server read; the kind's handler reads its own derived record back when it
/// loads the adapter.
/// </summary>
/// <param name="Kind">The name shown by the API.</param>
/// <param name="WeightBytes">Bytes of the adapter's weights on disk.</param>
public abstract record AdapterDescription(AdapterKind Kind, long WeightBytes)
{
    /// <summary>The handler that described this adapter and loads and executes it.</summary>
    public abstract IAdapterKindHandler Handler { get; }
    /// <summary>Largest rank of any module (0 when the kind has no rank).</summary>
    public abstract int MaxRank { get; }
    /// <summary>Short names of the adapted projections (q_proj, ...), without duplicates.</summary>
    public abstract IReadOnlyList<string> TargetModules { get; }
    /// <summary>Every adapted (layer, projection), for the API's detailed view.</summary>
    public abstract IReadOnlyList<AdapterModuleSummary> ModuleSummaries { get; }
    /// <summary>
    /// Null when the adapter may be linearly mixed with others in one request (<c>Σ scale_i · ΔW_i</c>); otherwise the
    /// reason it may not, completing "adapter 'x' v1 is ...", e.g. "a DoRA adapter: DoRA rescales whole weight rows".
    /// </summary>
    public virtual string? NotMixable => null;
    /// <summary>
    /// Names of other adapters this one uses (a mixture's experts). Empty for self-contained kinds. The registry may
    /// refuse deleting an adapter that others depend on.
    /// </summary>
    public virtual IReadOnlyList<string> DependsOn => [];
    /// <summary>
    /// The stored versions of <see cref="DependsOn"/> this description was validated against (the store checks they are
    /// still current when it publishes, and re-validates dependents when one of them is replaced).
    /// </summary>
    public virtual IReadOnlyList<AdapterRecord> Dependencies => [];
    /// <summary>A mixture's expert labels, in router order (the <c>expert</c> label of the expert metrics); null for kinds without experts.</summary>
    public virtual IReadOnlyList<string>? Experts => null;
    /// <summary>Experts chosen per token (a mixture's top-K; all experts for a dense mixture); null for kinds without experts.</summary>
    public virtual int? TopK => null;
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
