using AdapterServe.Adapters.Store;
using AdapterServe.Engine;
using AdapterServe.Modeling;

namespace AdapterServe.Adapters;

/// <summary>
/// The engine's adapter port over the registry and the residency cache. At submit a request's adapter names are
/// resolved to their current records and leased, so the request keeps that exact version until it ends; on the
/// engine thread each step's segments become one <see cref="AdapterBatch"/> hook. When the model is ready its base
/// weights go to the cache, which builds every adapter against them.
/// </summary>
public sealed class RegistryAdapterBinder(AdapterRegistry registry, AdapterResidencyCache cache) : IAdapterBinder
{
    private sealed class LeasedBinding(IReadOnlyList<(AdapterLease Lease, float Scale)> leases) : AdapterBinding
    {
        public IReadOnlyList<(AdapterLease Lease, float Scale)> Leases { get; } = leases;
        public override string GroupKey { get; } = string.Join("|", leases.Select(l => $"{l.Lease.Name}@{l.Lease.Version}*{l.Scale:R}"));
        /// <summary>Device copies, set once every lease is ready (engine thread only).</summary>
        public IReadOnlyList<(LoadedAdapter Adapter, float Scale)>? Resident { get; set; }
    }

    public void ModelReady(IBaseWeights baseWeights) => cache.ModelReady(baseWeights);

    public AdapterBinding Bind(IReadOnlyList<AdapterRef> adapters)
    {
        var leases = new List<(AdapterLease, float)>(adapters.Count);
        try
        {
            foreach (var a in adapters)
            {
                if (!registry.TryResolve(a.Name, out var record)) throw new AdapterNotFoundException(a.Name);
                leases.Add((cache.Acquire(record), a.Scale));
            }
        }
        catch
        {
            foreach (var (lease, _) in leases) cache.Release(lease);
            throw;
        }
        return new LeasedBinding(leases);
    }

    public bool IsReady(AdapterBinding binding)
    {
        var b = Leased(binding);
        if (b.Resident is not null) return true;
        var resident = new List<(LoadedAdapter, float)>(b.Leases.Count);
        foreach (var (lease, scale) in b.Leases)
        {
            if (!cache.TryGetReady(lease, out var adapter)) return false;
            resident.Add((adapter, scale));
        }
        b.Resident = resident;
        return true;
    }

    public void Release(AdapterBinding binding)
    {
        foreach (var (lease, _) in Leased(binding).Leases) cache.Release(lease);
    }

    public IAdapterStepHook? BuildHook(IReadOnlyList<StepSegment> segments)
    {
        var steps = new List<AdapterSegment>(segments.Count);
        foreach (var s in segments)
        {
            var resident = s.Binding is null ? null : Leased(s.Binding).Resident;
            steps.Add(resident is null ? AdapterSegment.Base(s.TokenStart, s.TokenCount) : new AdapterSegment(s.TokenStart, s.TokenCount, resident));
        }
        return steps.Any(s => s.Adapters.Count > 0) ? new AdapterBatch(steps) : null;
    }

    private static LeasedBinding Leased(AdapterBinding binding) =>
        binding as LeasedBinding ?? throw new ArgumentException($"the binding was not made by this binder ({binding.GetType().Name})", nameof(binding));
}
