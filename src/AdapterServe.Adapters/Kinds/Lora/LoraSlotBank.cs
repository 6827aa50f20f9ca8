using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>
/// The plain low-rank deltas (LoRA, rsLoRA, KaSA) of the device-resident adapters of one <see cref="AdapterSlotTable"/>,
/// stacked per adapted projection by slot (<see cref="StackedProjection"/>), so one batched matmul pair serves every
/// adapter of a step. Slot 0 and the slots of adapters that do not target a projection are zeros; ranks below the
/// stack's <c>r_max</c> are zero padded; the file's scaling is already folded into B (see <see cref="LoraWeights"/>).
/// An adapter's tensors are copied in the first time a step uses it in its slot (the slot's stamp tells a new
/// occupant). DoRA (row rescaling), lora_B biases and ranks above <see cref="MaxRank"/> are not stacked: such adapters
/// keep the per-group path. Engine thread only; owned by the table (<see cref="AdapterSlotTable.KindState{T}"/>).
/// </summary>
internal sealed class LoraSlotBank(AdapterSlotTable table) : SlotStacks(table)
{
    /// <summary>Largest served rank stacked (a KaSA adapter serves removed components + r).</summary>
    public const int MaxRank = 64;

    private readonly Dictionary<(int Layer, Projection Projection), StackedProjection> _projections = [];

    public static LoraSlotBank Of(AdapterSlotTable table) => table.KindState(t => new LoraSlotBank(t));

    /// <summary>True when <paramref name="modules"/> is a plain low-rank delta the stacks can hold.</summary>
    public static bool CanStack(LoraModules modules) => modules.IsPlainDelta && modules.MaxRank <= MaxRank;

    /// <summary>
    /// Makes sure <paramref name="adapter"/>'s tensors are in its slot of every stack; false when it cannot be served
    /// from the stacks (no slot of this table, not stackable, another device or dtype).
    /// </summary>
    public bool TryPlace(LoadedAdapter adapter, LoraModules modules) => CanStack(modules) && TryPlace(adapter, slot =>
    {
        foreach (var w in modules.All)
            if (!_projections.ContainsKey((w.Layer, w.Projection)))
                _projections[(w.Layer, w.Projection)] = new StackedProjection(w.InFeatures, w.OutFeatures, Device!, DType);
        // Every stack covers every slot written so far (a stack created now must index the older adapters' zeros too).
        foreach (var ((layer, projection), stack) in _projections)
        {
            stack.Cover(CoveredSlots);
            stack.Write(slot.Index, modules.Module(layer, projection));
        }
    });

    /// <summary>The stack of one projection, or null when no adapter placed so far targets it.</summary>
    public StackedProjection? Projection(int layer, Projection projection) => _projections.GetValueOrDefault((layer, projection));

    public override void Dispose()
    {
        foreach (var s in _projections.Values) s.Dispose();
        _projections.Clear();
    }
}

/// <summary>
/// One projection's stacked deltas: <c>Aᵀ: [slots, d_in, r_max]</c> and <c>Bᵀ: [slots, r_max, d_out]</c> (transposed so
/// that <c>bmm(x[S, L, d_in], Aᵀ[S]) → [S, L, r]</c> and <c>bmm(xa, Bᵀ[S]) → [S, L, d_out]</c> read them as stored).
/// Grows (slots as <see cref="SlotStacks"/> covers them; rank to the largest placed) by copying into larger zero
/// tensors. Owns its tensors.
/// </summary>
internal sealed class StackedProjection(int inFeatures, int outFeatures, Device device, ScalarType dtype) : IDisposable
{
    public int InFeatures { get; } = inFeatures;
    public int OutFeatures { get; } = outFeatures;
    public int Slots { get; private set; }
    public int Rank { get; private set; }
    /// <summary><c>[Slots, d_in, Rank]</c>.</summary>
    public Tensor AT { get; private set; } = empty([0, inFeatures, 0], dtype, device).DetachFromDisposeScope();
    /// <summary><c>[Slots, Rank, d_out]</c>.</summary>
    public Tensor BT { get; private set; } = empty([0, 0, outFeatures], dtype, device).DetachFromDisposeScope();

    /// <summary>Grows (zeros) to at least <paramref name="slots"/> slots. Outside inference_mode.</summary>
    public void Cover(int slots) => Grow(slots, Rank);

    /// <summary>Slot <paramref name="slot"/> (covered) := <paramref name="weights"/> (zero padded), or zeros when null. Outside inference_mode.</summary>
    public void Write(int slot, LoraWeights? weights)
    {
        Grow(Slots, Math.Max(Rank, weights?.Rank ?? 0));
        var a = AT.select(0, slot);                                            // [d_in, r_max]
        var b = BT.select(0, slot);                                            // [r_max, d_out]
        a.zero_();
        b.zero_();
        if (weights is null) return;
        if (weights.InFeatures != InFeatures || weights.OutFeatures != OutFeatures)
            throw new InvalidOperationException(
                $"{weights.Projection.ShortName()} of layer {weights.Layer} is [{weights.OutFeatures}, {weights.InFeatures}], its slot stack [{OutFeatures}, {InFeatures}]");
        a.narrow(1, 0, weights.Rank).copy_(weights.A.t());                     // [d_in, r] ← Aᵀ
        b.narrow(0, 0, weights.Rank).copy_(weights.B.t());                     // [r, d_out] ← (s·B)ᵀ
    }

    private void Grow(int slots, int rank)
    {
        if (slots <= Slots && rank <= Rank) return;
        slots = Math.Max(slots, Slots);
        rank = Math.Max(rank, Rank);
        var at = zeros([slots, InFeatures, rank], AT.dtype, AT.device);        // [slots, d_in, r_max]
        var bt = zeros([slots, rank, OutFeatures], BT.dtype, BT.device);       // [slots, r_max, d_out]
        if (Slots > 0 && Rank > 0)
        {
            at.narrow(0, 0, Slots).narrow(2, 0, Rank).copy_(AT);
            bt.narrow(0, 0, Slots).narrow(1, 0, Rank).copy_(BT);
        }
        AT.Dispose();
        BT.Dispose();
        AT = at.DetachFromDisposeScope();
        BT = bt.DetachFromDisposeScope();
        Slots = slots;
        Rank = rank;
    }

    public void Dispose()
    {
        AT.Dispose();
        BT.Dispose();
    }
}
