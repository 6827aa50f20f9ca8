using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Omoe;

/// <summary>
/// What OMoE adapters must share for their groups to be stacked in one batched sequence without changing a single
/// result: the expert count n and rank r (the shapes of the router, <c>A_all</c>, the coordinates and, with the
/// projection, <c>p = min(d_out, n·r)</c>), top_k (how many columns are orthonormalised, and whether the routing is
/// dense), the rescale and ε (the per-token maths). Every field comes from <c>adapter_config.json</c>, so the adapters
/// of one training config (the usual deployment) share one signature.
/// </summary>
internal readonly record struct OmoeSignature(int Experts, int Rank, int? TopK, bool RescaleNorm, double Eps)
{
    public static OmoeSignature Of(OmoeConfig config) => new(config.NumExperts, config.R, config.TopK, config.RescaleNorm, config.Eps);

    /// <summary>Experts that take part per token: K, or n.</summary>
    public int Active => TopK ?? Experts;
}

/// <summary>One stack of the OMoE slots: a projection and the signature of the adapters it holds.</summary>
internal readonly record struct OmoeStackKey(int Layer, Projection Projection, OmoeSignature Signature);

/// <summary>
/// The OMoE adapters of one <see cref="AdapterSlotTable"/>'s device-resident adapters, stacked by slot per (projection,
/// <see cref="OmoeSignature"/>) (<see cref="OmoeStack"/>), so a step with several OMoE groups runs one fixed sequence
/// of batched calls per projection and signature whatever the number of distinct adapters (<see cref="OmoeSlotStep"/>),
/// as the LoRA-Mixer slots do. Only adapters of one signature share a stack, as the Kronecker slots stack only terms of
/// one layout: no padding of experts, ranks or K, so the stacked path is exactly the per-group maths. A slot holds
/// zeros in every stack its adapter has no module for (another projection or signature): zero expert outputs are
/// guarded and contribute nothing. An adapter's tensors are copied in the first time a step uses it in its slot
/// (<see cref="SlotStacks"/>).
/// </summary>
internal sealed class OmoeSlotBank(AdapterSlotTable table) : KeyedSlotStacks<OmoeStackKey, OmoeModule, OmoeStack>(table)
{
    public static OmoeSlotBank Of(AdapterSlotTable table) => table.KindState(t => new OmoeSlotBank(t));

    /// <summary>
    /// Makes sure <paramref name="adapter"/>'s modules are in its slot of every stack; false when it cannot be served
    /// from the stacks (no slot of this table, another device or dtype).
    /// </summary>
    public bool TryPlace(LoadedAdapter adapter, OmoeWeights weights)
    {
        var signature = OmoeSignature.Of(weights.Config);
        return TryPlace(adapter,
            () => weights.Modules.ToDictionary(m => new OmoeStackKey(m.Site.Layer, m.Site.Projection, signature), m => m.Module),
            module => new OmoeStack(signature, module.InFeatures, module.OutFeatures, module.BasisRank, Device!, DType));
    }
}

/// <summary>
/// One projection's stacked OMoE modules of one signature, by slot, each laid out for the slot path's batched GEMMs:
/// routers <c>[slots, n, d_in]</c> (float32), <c>A_all [slots, n·r, d_in]</c>, the experts' coordinates
/// <c>[slots, n, r, p]</c> (float32) and the bases transposed, <c>Uᵀ [slots, p, d_out]</c> (see <see cref="OmoeModule"/>);
/// zeros for slots without such a module. Plus the signature's ε. Grows in slots by copying. Owns its tensors.
/// </summary>
internal sealed class OmoeStack : ISlotStack<OmoeModule>
{
    public OmoeStack(OmoeSignature signature, long inFeatures, long outFeatures, long basisRank, Device device, ScalarType dtype)
    {
        Signature = signature;
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        BasisRank = basisRank;
        int n = signature.Experts, r = signature.Rank;
        Router = empty([0, n, inFeatures], ScalarType.Float32, device).DetachFromDisposeScope();
        A = empty([0, n * r, inFeatures], dtype, device).DetachFromDisposeScope();
        Coordinates = empty([0, n, r, basisRank], ScalarType.Float32, device).DetachFromDisposeScope();
        Basis = empty([0, basisRank, outFeatures], dtype, device).DetachFromDisposeScope();
        Eps = tensor((float)signature.Eps, ScalarType.Float32, device).DetachFromDisposeScope();
    }

    public OmoeSignature Signature { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    /// <summary>p: the width of the experts' coordinates (<c>min(d_out, n·r)</c>).</summary>
    public long BasisRank { get; }
    public int Slots { get; private set; }
    /// <summary><c>W_g [Slots, n, d_in]</c>, float32.</summary>
    public Tensor Router { get; private set; }
    /// <summary><c>A_all [Slots, n·r, d_in]</c>.</summary>
    public Tensor A { get; private set; }
    /// <summary><c>[Slots, n, r, p]</c>, float32: per slot <see cref="OmoeModule.Coordinates"/>.</summary>
    public Tensor Coordinates { get; private set; }
    /// <summary><c>Uᵀ [Slots, p, d_out]</c>: per slot <see cref="OmoeModule.Basis"/> transposed.</summary>
    public Tensor Basis { get; private set; }
    /// <summary>0-dim float32: the signature's ε.</summary>
    public Tensor Eps { get; }

    /// <summary>Grows (keeping every slot's contents) to at least <paramref name="slots"/> slots. Outside inference_mode.</summary>
    public void Grow(int slots)
    {
        if (slots <= Slots) return;
        Tensor Larger(Tensor t)
        {
            var larger = SlotStacks.WithSlots(t, slots);                                             // [slots, ...]
            t.Dispose();
            return larger;
        }
        Router = Larger(Router);
        A = Larger(A);
        Coordinates = Larger(Coordinates);
        Basis = Larger(Basis);
        Slots = slots;
    }

    /// <summary>Slot <paramref name="slot"/> := <paramref name="module"/>, or zeros when null. Outside inference_mode.</summary>
    public void Write(int slot, OmoeModule? module)
    {
        if (module is null)
        {
            foreach (var t in new[] { Router, A, Coordinates, Basis }) t.select(0, slot).zero_();
            return;
        }
        if (module.Experts != Signature.Experts || module.Rank != Signature.Rank || module.InFeatures != InFeatures
            || module.OutFeatures != OutFeatures || module.BasisRank != BasisRank)
            throw new InvalidOperationException(
                $"an OMoE module of n = {module.Experts}, r = {module.Rank}, [{module.OutFeatures}, {module.InFeatures}], p = {module.BasisRank} does not fit its slot stack (n = {Signature.Experts}, r = {Signature.Rank}, [{OutFeatures}, {InFeatures}], p = {BasisRank})");
        Router.select(0, slot).copy_(module.Router);
        A.select(0, slot).copy_(module.AAll);
        Coordinates.select(0, slot).copy_(module.Coordinates);
        Basis.select(0, slot).copy_(module.Basis.t());
    }

    public void Dispose()
    {
        Router.Dispose();
        A.Dispose();
        Coordinates.Dispose();
        Basis.Dispose();
        Eps.Dispose();
    }
}
