namespace AdapterServe.Adapters;

/// <summary>
/// A running sequence's hold on one exact adapter version (name, version): while held, that version is never evicted
/// from the device, and a newer version of the name never replaces it. Get it with
/// <see cref="AdapterResidencyCache.Acquire"/>, give it back once with <see cref="AdapterResidencyCache.Release"/>.
/// </summary>
public sealed class AdapterLease
{
    private int _released;

    internal AdapterLease(CachedVersion entry)
    {
        Entry = entry;
        HostLoaded = entry.HostLoaded.Task;
    }

    public AdapterRecord Record => Entry.Record;
    public string Name => Entry.Record.Name;
    public int Version => Entry.Record.Version;
    /// <summary>Completes (never faults) once the version's load into the host tier has finished, successfully or not.</summary>
    public Task HostLoaded { get; }
    public bool IsReleased => Volatile.Read(ref _released) != 0;

    internal CachedVersion Entry { get; }

    internal bool TryMarkReleased() => Interlocked.Exchange(ref _released, 1) == 0;

    public override string ToString() => $"lease on adapter '{Name}' v{Version}";
}

/// <summary>The cache's state for one (name, version). Guarded by the cache's lock.</summary>
internal sealed class CachedVersion(AdapterRecord record)
{
    public AdapterRecord Record { get; } = record;
    public (string Name, int Version) Key => (Record.Name, Record.Version);
    public int Leases;
    public LoadedAdapter? Host;
    public LoadedAdapter? Device;
    public bool Loading;
    /// <summary>The engine thread is copying <see cref="Host"/> to the device outside the lock.</summary>
    public bool Promoting;
    public AdapterValidationException? Error;
    public long LastUsedTick;
    public TaskCompletionSource HostLoaded = NewSignal();

    public static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    public override string ToString() => $"adapter '{Record.Name}' v{Record.Version}";
}
