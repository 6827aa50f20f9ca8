using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;

namespace AdapterServe.Engine;

/// <summary>
/// The engine's adapter port over the registry and the residency cache. At submit a request's adapter names are
/// resolved to their current records and leased, so the request keeps that exact version until it ends; on the
/// engine thread each step's segments become one <see cref="AdapterBatch"/> hook.
/// </summary>
public sealed class RegistryAdapterBinder(AdapterRegistry registry, AdapterResidencyCache cache) : IAdapterBinder
{
    private sealed class Binding(IReadOnlyList<(AdapterLease Lease, float Scale)> leases)
    {
        public IReadOnlyList<(AdapterLease Lease, float Scale)> Leases { get; } = leases;
        /// <summary>Device copies, set once every lease is ready (engine thread only).</summary>
        public IReadOnlyList<(LoadedAdapter Adapter, float Scale)>? Resident { get; set; }
    }

    public object Bind(IReadOnlyList<AdapterRef> adapters)
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
        return new Binding(leases);
    }

    public bool IsReady(object binding)
    {
        var b = (Binding)binding;
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

    public void Release(object binding)
    {
        foreach (var (lease, _) in ((Binding)binding).Leases) cache.Release(lease);
    }

    public string GroupKey(object binding) =>
        string.Join("|", ((Binding)binding).Leases.Select(l => $"{l.Lease.Name}@{l.Lease.Version}*{l.Scale:R}"));

    public IProjectionHook? BuildHook(IReadOnlyList<StepSegment> segments)
    {
        var steps = new List<Adapters.AdapterSegment>(segments.Count);
        foreach (var s in segments)
        {
            var resident = (s.Binding as Binding)?.Resident;
            steps.Add(resident is null ? Adapters.AdapterSegment.Base(s.TokenStart, s.TokenCount) : new Adapters.AdapterSegment(s.TokenStart, s.TokenCount, resident));
        }
        return steps.Any(s => s.Adapters.Count > 0) ? new AdapterBatch(steps) : null;
    }
}
