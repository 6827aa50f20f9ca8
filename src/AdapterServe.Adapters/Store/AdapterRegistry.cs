using System.Collections.Frozen;

namespace AdapterServe.Adapters.Store;

/// <summary>A change of the registry: <c>Current</c> null = removed; <c>Previous</c> null = newly added.</summary>
public sealed record AdapterRegistryChange(string Name, AdapterRecord? Previous, AdapterRecord? Current);

/// <summary>
/// Name → current <see cref="AdapterRecord"/>, as an immutable snapshot swapped whole (YARP's configuration
/// pattern). Readers never lock; a request keeps the record it resolved, so a later replace or delete cannot
/// change what a running sequence uses. Writers (the store) swap snapshots with a compare-and-exchange loop.
/// </summary>
public sealed class AdapterRegistry
{
    private sealed record Snapshot(FrozenDictionary<string, AdapterRecord> Records, IReadOnlyList<AdapterRecord> Sorted);

    private static readonly Snapshot Empty = new(FrozenDictionary<string, AdapterRecord>.Empty, []);

    private Snapshot _snapshot = Empty;

    /// <summary>Raised after each change, on the writer's thread, outside any lock.</summary>
    public event Action<AdapterRegistryChange>? Changed;

    public bool TryResolve(string name, out AdapterRecord record) => Volatile.Read(ref _snapshot).Records.TryGetValue(name, out record!);

    /// <summary>The current records, ordered by name.</summary>
    public IReadOnlyList<AdapterRecord> List() => Volatile.Read(ref _snapshot).Sorted;

    public int Count => Volatile.Read(ref _snapshot).Records.Count;

    /// <summary>Makes <paramref name="record"/> the current version of its name (store only).</summary>
    public void Publish(AdapterRecord record) => Swap(record.Name, _ => record);

    /// <summary>Removes a name; returns the record it had (store only).</summary>
    public AdapterRecord? Remove(string name) => Swap(name, _ => null);

    /// <summary>Removes <paramref name="name"/> only while its current record is <paramref name="expected"/>.</summary>
    public bool Remove(string name, AdapterRecord expected)
    {
        bool removed = false;
        Swap(name, current => { removed = ReferenceEquals(current, expected); return removed ? null : current; });
        return removed;
    }

    /// <summary>Publishes <paramref name="record"/> only when its name has no current record.</summary>
    public bool PublishIfAbsent(AdapterRecord record)
    {
        bool published = false;
        Swap(record.Name, current => { published = current is null; return current ?? record; });
        return published;
    }

    private AdapterRecord? Swap(string name, Func<AdapterRecord?, AdapterRecord?> update)
    {
        while (true)
        {
            var before = Volatile.Read(ref _snapshot);
            var previous = before.Records.GetValueOrDefault(name);
            var current = update(previous);
            if (ReferenceEquals(previous, current)) return previous;

            var records = new Dictionary<string, AdapterRecord>(before.Records, StringComparer.Ordinal);
            if (current is null) records.Remove(name); else records[name] = current;
            var after = new Snapshot(records.ToFrozenDictionary(StringComparer.Ordinal),
                records.Values.OrderBy(r => r.Name, StringComparer.Ordinal).ToList());
            if (!ReferenceEquals(Interlocked.CompareExchange(ref _snapshot, after, before), before)) continue;

            Changed?.Invoke(new AdapterRegistryChange(name, previous, current));
            return previous;
        }
    }
}
