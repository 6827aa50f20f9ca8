using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters;

/// <summary>
/// The row layout of a slot path for one step (<see cref="SlotStacks"/>): S positions, each one group (one adapter with
/// one scale) or empty, laid out as <c>[S, L = longest group]</c> rows, shorter groups and empty positions padded with
/// step row 0 at scale 0. It gathers the groups' rows of a step tensor, picks the positions' slots of a stack, and adds
/// a result back into the rows (an in-place add when the rows are the step's in order, the common case: the engine
/// orders each step by adapter). Picking slots is a <c>narrow</c> of the stack when the positions' slots are
/// consecutive; otherwise, with <c>slotRange</c>, when the groups' slots are distinct and span at most twice their
/// number, the positions become every slot of that span (the slots no group uses are empty positions): reading a few
/// unused slots costs less than <c>index_select</c> copying every used one (the copy is all the groups' weights, read,
/// written and read again). Else an <c>index_select</c>. Owns its small index tensors.
/// </summary>
internal sealed class SlotRows : IDisposable
{
    private readonly Tensor? _rows;            // [S·L] int64 step rows (padding: row 0); null when they are 0..S·L−1 in order
    private readonly Tensor? _slotIndex;       // [S] int64 slots; null when consecutive
    private readonly int _firstSlot;
    private readonly Device _device;
    private Tensor? _rowSlots;                 // [S·L] int64 each row's slot, made on first use

    public SlotRows(IReadOnlyList<AdapterTokenGroup> groups, bool slotRange = false)
    {
        var slots = groups.Select(g => (long)g.Adapter.Slot!.Index).ToArray();
        Order = [.. Enumerable.Range(0, groups.Count)];
        bool consecutive = slots.Select((s, i) => s == slots[0] + i).All(c => c);
        long low = slots.Min(), span = slots.Max() - low + 1;
        if (!consecutive && slotRange && slots.Distinct().Count() == slots.Length && span <= 2 * slots.Length)
        {
            Order = [.. Enumerable.Repeat(-1, (int)span)];
            for (int i = 0; i < slots.Length; i++) Order[slots[i] - low] = i;
            slots = [.. Enumerable.Range(0, (int)span).Select(i => low + i)];
            consecutive = true;
        }
        Slots = slots;
        Groups = Order.Length;
        Length = groups.Max(g => (int)g.Count);
        Routed = [.. Order.Select(i => i < 0 ? 0L : groups[i].Count)];
        var rows = new long[Count];
        var scales = new float[Count];
        bool inOrder = true, unit = true;
        for (int s = 0; s < Groups; s++)
            for (int t = 0; t < Length; t++)
            {
                int i = s * Length + t;
                var g = Order[s] < 0 ? null : groups[Order[s]];
                bool real = g is not null && t < g.Count;
                rows[i] = real ? g!.Tokens[t] : 0;
                scales[i] = real ? g!.Scale : 0f;
                inOrder &= rows[i] == i;
                unit &= scales[i] == 1f;
            }
        _firstSlot = (int)Slots[0];

        var device = _device = groups[0].Adapter.Device;
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        _rows = inOrder ? null : tensor(rows, ScalarType.Int64, device).DetachFromDisposeScope();
        _slotIndex = consecutive ? null : tensor(Slots, ScalarType.Int64, device).DetachFromDisposeScope();
        Scale = unit ? null : tensor(scales, ScalarType.Float32, device).view(Groups, Length, 1).DetachFromDisposeScope();
    }

    /// <summary>Per position, the index of its group in the list given, or −1 for an empty position.</summary>
    public int[] Order { get; }

    /// <summary>S: positions (groups and empty ones).</summary>
    public int Groups { get; }
    /// <summary>L: rows per group.</summary>
    public int Length { get; }
    /// <summary>S·L.</summary>
    public long Count => (long)Groups * Length;
    /// <summary>Per position, its group's tokens (0 for an empty position): what the expert tally counts as routed there.</summary>
    public long[] Routed { get; }
    /// <summary>Each position's slot.</summary>
    private long[] Slots { get; }
    /// <summary><c>[S, L, 1]</c> float32: the group's scale per row, 0 on padding rows; null when every row has scale 1 (no padding).</summary>
    public Tensor? Scale { get; }

    /// <summary>The layout's rows of <paramref name="x"/> <c>[N, d]</c> → <c>[S·L, d]</c> (x itself, a narrow or a gather).</summary>
    public Tensor Gather(Tensor x) =>
        _rows is null ? (Count == x.size(0) ? x : x.narrow(0, 0, Count)) : x.index_select(0, _rows);

    /// <summary>The groups' slots of <paramref name="stack"/> <c>[slots, ...]</c> → <c>[S, ...]</c>.</summary>
    public Tensor SelectSlots(Tensor stack) =>
        _slotIndex is null ? stack.narrow(0, _firstSlot, Groups) : stack.index_select(0, _slotIndex);

    /// <summary><c>[S·L]</c> int64: each row's slot (for per-row gathers).</summary>
    public Tensor RowSlots()
    {
        if (_rowSlots is null)
        {
            using var inferenceOff = inference_mode(false);
            _rowSlots = tensor(Slots.SelectMany(s => Enumerable.Repeat(s, Length)).ToArray(), ScalarType.Int64, _device)
                .DetachFromDisposeScope();
        }
        return _rowSlots;
    }

    /// <summary>
    /// <c>[S, L, width]</c> int64 0/1, the selections of the step that count for the expert tally: on each real row of a
    /// position, its group's first <paramref name="columns"/>(group index into the list given) entries (all
    /// <paramref name="width"/> by default); 0 on padding rows and empty positions. The caller owns it (or hands it to the tally).
    /// </summary>
    public Tensor SelectionMask(int width, Func<int, int>? columns = null)
    {
        var valid = new long[Count * width];
        for (int p = 0; p < Groups; p++)
        {
            if (Order[p] < 0) continue;
            int counted = columns?.Invoke(Order[p]) ?? width;
            for (int t = 0; t < Routed[p]; t++) Array.Fill(valid, 1L, (int)((p * (long)Length + t) * width), counted);
        }
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        return tensor(valid, ScalarType.Int64, _device).view(Groups, Length, width).DetachFromDisposeScope();
    }

    /// <summary><c>y[rows] += delta</c> for <paramref name="delta"/> <c>[S·L, d_out]</c> (cast to y's dtype; padding rows must be 0).</summary>
    public void AddTo(Tensor y, Tensor delta)
    {
        if (delta.dtype != y.dtype) delta = delta.to(y.dtype);
        if (_rows is not null) TorchScalars.IndexAddInPlace(y, 0, _rows, delta);
        else TorchScalars.AddInPlace(Count == y.size(0) ? y : y.narrow(0, 0, Count), delta);
    }

    public void Dispose()
    {
        _rows?.Dispose();
        _slotIndex?.Dispose();
        _rowSlots?.Dispose();
        Scale?.Dispose();
    }
}
