using static TorchSharp.torch;

namespace AdapterServe.Adapters;

/// <summary>
/// What every kind's per-slot stacks share (<c>LoraSlotBank</c>, <c>MixerSlotBank</c>, <c>KroneckerSlotBank</c>,
/// <c>OmoeSlotBank</c>, <c>SmoreSlotBank</c>): one
/// <see cref="AdapterSlotTable"/>, one device and dtype, and which occupant each slot's tensors were last written
/// for (a slot's <see cref="AdapterSlot.Stamp"/> tells a new occupant from the old one), so an adapter is copied in the
/// first time a step uses it in its slot. A kind's stacks grow in steps of <see cref="SlotGrowth"/> slots, up to the
/// table's capacity + 1 (slot 0 = none). Engine thread only; owned by the table (<see cref="AdapterSlotTable.KindState{T}"/>).
/// </summary>
internal abstract class SlotStacks(AdapterSlotTable table) : IDisposable
{
    private const int SlotGrowth = 4;
    private readonly long[] _written = new long[table.Capacity + 1];   // stamp of the occupant whose tensors each slot holds (0: zeros)

    public AdapterSlotTable Table { get; } = table;
    /// <summary>The device of the stacks (the first placed adapter's), or null before any.</summary>
    protected Device? Device { get; private set; }
    protected ScalarType DType { get; private set; }
    /// <summary>Highest slot written so far: every stack covers at least <see cref="CoveredSlots"/> slots.</summary>
    protected int HighestSlot { get; private set; }

    /// <summary>(adapter, scale) groups served from the stacks so far, over all steps (tests, diagnostics).</summary>
    public long GroupsServed { get; internal set; }

    /// <summary>Slots every stack must hold now (covering <see cref="HighestSlot"/>, in steps of four, at most capacity + 1).</summary>
    protected int CoveredSlots => Math.Min(Table.Capacity + 1, (HighestSlot / SlotGrowth + 1) * SlotGrowth);

    /// <summary>
    /// Makes sure <paramref name="adapter"/>'s tensors are in its slot: false when the stacks cannot serve it (no slot
    /// of this table, another device or dtype); else <paramref name="write"/> runs (outside inference_mode, in a dispose
    /// scope) unless the slot already holds this occupant.
    /// </summary>
    protected bool TryPlace(LoadedAdapter adapter, Action<AdapterSlot> write)
    {
        if (adapter.Slot is not { } slot || !ReferenceEquals(slot.Table, Table)) return false;
        if (Device is not null && (adapter.Device.type != Device.type || adapter.Device.index != Device.index || adapter.DType != DType)) return false;
        if (_written[slot.Index] == slot.Stamp) return true;

        Device ??= adapter.Device;
        DType = adapter.DType;
        HighestSlot = Math.Max(HighestSlot, slot.Index);
        using (inference_mode(false))
        using (NewDisposeScope())
            write(slot);
        _written[slot.Index] = slot.Stamp;
        return true;
    }

    public abstract void Dispose();

    /// <summary>
    /// <paramref name="stack"/> <c>[slots_old, ...]</c> copied into the first slots of new zeros <c>[slots, ...]</c>
    /// (detached; the caller disposes the old tensor). Outside inference_mode.
    /// </summary>
    internal static Tensor WithSlots(Tensor stack, int slots)
    {
        var larger = zeros([slots, .. stack.shape[1..]], stack.dtype, stack.device);               // [slots, ...]
        if (stack.size(0) > 0) larger.narrow(0, 0, stack.size(0)).copy_(stack);
        return larger.DetachFromDisposeScope();
    }
}

/// <summary>One stack of a <see cref="KeyedSlotStacks{TKey, TItem, TStack}"/>: items of one layout by slot, zeros where a slot has none.</summary>
internal interface ISlotStack<in TItem> : IDisposable
{
    /// <summary>Grows (keeping every slot's contents) to at least <paramref name="slots"/> slots. Outside inference_mode.</summary>
    void Grow(int slots);
    /// <summary>Slot <paramref name="slot"/> := <paramref name="item"/>, or zeros when null. Outside inference_mode.</summary>
    void Write(int slot, TItem? item);
}

/// <summary>
/// The stacks of kinds that stack only items of one layout together (Kronecker terms by shape, OMoE modules by
/// signature, S'MoRE modules by structure): one stack per key, created by the first adapter placed with such an item.
/// Placing an adapter writes each of its items into its slot of that key's stack, and zeros into every other stack.
/// </summary>
internal abstract class KeyedSlotStacks<TKey, TItem, TStack>(AdapterSlotTable table) : SlotStacks(table)
    where TKey : notnull where TItem : class where TStack : class, ISlotStack<TItem>
{
    private readonly Dictionary<TKey, TStack> _stacks = [];

    /// <summary>The stack of <paramref name="key"/>, or null when no adapter placed so far has such an item.</summary>
    public TStack? Stack(TKey key) => _stacks.GetValueOrDefault(key);

    /// <summary>
    /// Makes sure <paramref name="adapter"/>'s <paramref name="items"/> are in its slot of every stack; false when it
    /// cannot be served from the stacks (no slot of this table, another device or dtype).
    /// </summary>
    /// <param name="items">The adapter's items by key (called only when its slot must be written).</param>
    /// <param name="create">A new stack for a key, shaped like one of its items.</param>
    protected bool TryPlace(LoadedAdapter adapter, Func<IReadOnlyDictionary<TKey, TItem>> items, Func<TItem, TStack> create) => TryPlace(adapter, slot =>
    {
        var own = items();
        foreach (var (key, item) in own)
            if (!_stacks.ContainsKey(key)) _stacks[key] = create(item);
        // Every stack covers every slot written so far (a stack created now must hold the older adapters' zeros too).
        foreach (var (key, stack) in _stacks)
        {
            stack.Grow(CoveredSlots);
            stack.Write(slot.Index, own.GetValueOrDefault(key));
        }
    });

    public override void Dispose()
    {
        foreach (var s in _stacks.Values) s.Dispose();
        _stacks.Clear();
    }
}

/// <summary>How a kind's step executor picks the groups its slot stacks serve.</summary>
internal static class SlotGroups
{
    /// <summary>Longest group (tokens) any kind serves from its slots; longer ones are prefills, where each group's own GEMMs dominate.</summary>
    public const int MaxGroupTokens = 16;

    /// <summary>
    /// The groups of <paramref name="groups"/> that go through the slot path: non-empty groups of at most
    /// <see cref="MaxGroupTokens"/> tokens whose adapter has a slot of one table, that <paramref name="stackable"/>
    /// accepts and whose stacks <paramref name="place"/> fills. Null (and every group in <paramref name="rest"/>) when
    /// fewer than <paramref name="minGroups"/> qualify: few groups are cheaper on their own path.
    /// </summary>
    public static List<(AdapterTokenGroup Group, T Modules)>? Select<T, TStacks>(
        IReadOnlyList<(AdapterTokenGroup Group, T Modules)> groups, int minGroups,
        Func<AdapterSlotTable, TStacks> stacksOf, Func<TStacks, LoadedAdapter, T, bool> place, Func<T, bool>? stackable,
        out TStacks? stacks, out List<(AdapterTokenGroup Group, T Modules)> rest) where TStacks : SlotStacks
    {
        rest = [];
        stacks = null;
        var candidates = new List<(AdapterTokenGroup Group, T Modules)>();
        foreach (var (g, m) in groups)
        {
            bool candidate = g.Count > 0 && g.Count <= MaxGroupTokens && g.Adapter.Slot is { } slot
                && (stacks is null || ReferenceEquals(stacks.Table, slot.Table)) && (stackable?.Invoke(m) ?? true);
            if (candidate)
            {
                stacks ??= stacksOf(g.Adapter.Slot!.Table);
                candidates.Add((g, m));
            }
            else rest.Add((g, m));
        }
        var placed = new List<(AdapterTokenGroup Group, T Modules)>();
        if (stacks is not null && candidates.Count >= minGroups)
            foreach (var (g, m) in candidates)
            {
                if (place(stacks, g.Adapter, m)) placed.Add((g, m));
                else rest.Add((g, m));
            }
        if (placed.Count >= minGroups) return placed;
        rest = [.. groups];
        return null;
    }

    /// <summary>
    /// A <c>stackable</c> filter for kinds that stack only modules of equal structure (OMoE, S'MoRE): true for modules
    /// with a structure (<paramref name="classes"/>) that at least <paramref name="minGroups"/> of the step's candidate
    /// groups (short, slotted) share; a structure alone in the step keeps its group on its own path.
    /// </summary>
    public static Func<T, bool> SharingAClass<T, TClass>(IEnumerable<(AdapterTokenGroup Group, T Modules)> groups, int minGroups,
        Func<T, IEnumerable<TClass>> classes) where TClass : notnull
    {
        var count = new Dictionary<TClass, int>();
        foreach (var (g, modules) in groups)
            if (g.Count > 0 && g.Count <= MaxGroupTokens && g.Adapter.Slot is not null)
                foreach (var c in classes(modules).Distinct()) count[c] = count.GetValueOrDefault(c) + 1;
        return modules => classes(modules).Any(c => count.GetValueOrDefault(c) >= minGroups);
    }
}
