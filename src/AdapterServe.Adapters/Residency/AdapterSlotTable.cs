namespace AdapterServe.Adapters;

/// <summary>
/// One device-resident adapter version's place in its <see cref="AdapterSlotTable"/>: kinds that stack their adapters
/// per projection (LoRA: <c>A: [slots, d_in, r_max]</c>) keep this adapter's tensors at <see cref="Index"/>.
/// <see cref="Stamp"/> is unique per assignment, so a kind can tell a slot's new occupant from its old one.
/// </summary>
public sealed record AdapterSlot(AdapterSlotTable Table, int Index, long Stamp);

/// <summary>
/// The device slots behind the residency cache's device tier: slot 0 means "no adapter", slots 1..<see cref="Capacity"/>
/// hold resident versions (capacity = the device tier's adapter count). A version gets the lowest free slot when it
/// enters the device tier and gives it back when it leaves (eviction, forget); a replaced version is another
/// version, so it gets its own slot while running sequences keep the old one. Kinds keep their stacked tensors as
/// per-table state (<see cref="KindState{T}"/>), disposed with the table. Slot bookkeeping is thread-safe; kind state
/// belongs to the engine thread.
/// </summary>
public sealed class AdapterSlotTable : IDisposable
{
    private readonly object _gate = new();
    private readonly bool[] _taken;                          // [Capacity + 1], index 0 unused (the "none" slot)
    private readonly Dictionary<Type, IDisposable> _kindStates = [];
    private long _stamps;
    private bool _disposed;

    public AdapterSlotTable(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        Capacity = capacity;
        _taken = new bool[capacity + 1];
    }

    /// <summary>Slots for adapters (slot 0, "none", comes on top).</summary>
    public int Capacity { get; }

    /// <summary>Slots taken now.</summary>
    public int Count
    {
        get { lock (_gate) return _taken.Count(t => t); }
    }

    /// <summary>Gives <paramref name="adapter"/> the lowest free slot (a no-op when it already has one of this table).</summary>
    /// <exception cref="InvalidOperationException">Every slot is taken.</exception>
    public AdapterSlot Assign(LoadedAdapter adapter)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (adapter.Slot is { } held && ReferenceEquals(held.Table, this)) return held;
            int free = Array.IndexOf(_taken, false, 1);
            if (free < 0) throw new InvalidOperationException($"all {Capacity} adapter slots are taken; {adapter} gets none");
            _taken[free] = true;
            var slot = new AdapterSlot(this, free, ++_stamps);
            adapter.Slot = slot;
            return slot;
        }
    }

    /// <summary>Gives back <paramref name="adapter"/>'s slot of this table, if it holds one.</summary>
    public void Free(LoadedAdapter adapter)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        lock (_gate)
        {
            if (adapter.Slot is not { } slot || !ReferenceEquals(slot.Table, this)) return;
            _taken[slot.Index] = false;
            adapter.Slot = null;
        }
    }

    /// <summary>A kind's state over this table's slots (its stacked tensors), created on first use. Engine thread.</summary>
    public T KindState<T>(Func<AdapterSlotTable, T> create) where T : class, IDisposable
    {
        ArgumentNullException.ThrowIfNull(create);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_kindStates.TryGetValue(typeof(T), out var state)) _kindStates[typeof(T)] = state = create(this);
            return (T)state;
        }
    }

    /// <summary>Frees every kind's stacked tensors.</summary>
    public void Dispose()
    {
        List<IDisposable> states;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            states = [.. _kindStates.Values];
            _kindStates.Clear();
        }
        foreach (var s in states) s.Dispose();
    }
}
