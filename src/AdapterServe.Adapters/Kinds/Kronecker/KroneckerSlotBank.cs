using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>What a stacked Kronecker term is: a projection and the term's shape, component count and contraction order.</summary>
internal readonly record struct KroneckerTermKey(int Layer, Projection Projection, KroneckerShape Shape, int Count, bool LeftFirst)
{
    public static KroneckerTermKey Of(KroneckerWeights module, KroneckerTerm term) =>
        new(module.Layer, module.Projection, term.Shape, term.Count, term.LeftFirst);
}

/// <summary>
/// The LoKr and MoKA terms of one <see cref="AdapterSlotTable"/>'s device-resident adapters, stacked by slot per
/// (projection, term shape, component count, order) (<see cref="KroneckerTermStack"/>): adapters of the same layout on
/// the same base (the common case: one LoKr config per team) share one stack, so a step with many of them runs a fixed
/// number of batched calls per projection and distinct term shape, whatever the number of adapters
/// (<see cref="KroneckerSlotStep"/>). A slot holds zeros in every stack its adapter has no term for. An adapter's
/// factors are copied in the first time a step uses it in its slot (<see cref="SlotStacks"/>).
/// </summary>
internal sealed class KroneckerSlotBank(AdapterSlotTable table) : KeyedSlotStacks<KroneckerTermKey, KroneckerTerm, KroneckerTermStack>(table)
{
    public static KroneckerSlotBank Of(AdapterSlotTable table) => table.KindState(t => new KroneckerSlotBank(t));

    /// <summary>Makes sure <paramref name="adapter"/>'s terms are in its slot of every stack; false when it cannot be served from them.</summary>
    public bool TryPlace(LoadedAdapter adapter, KroneckerModules modules) => TryPlace(adapter,
        () => modules.All.SelectMany(m => m.Terms.Select(t => (Key: KroneckerTermKey.Of(m, t), Term: t))).ToDictionary(p => p.Key, p => p.Term),
        term => new KroneckerTermStack(term.Left.size(0), term.Left.size(1), term.Right.size(0), term.Right.size(1), Device!, DType));
}

/// <summary>
/// One stacked term layout: <c>Left [slots, l0, l1]</c> and <c>Right [slots, r0, r1]</c>, each slot's factors laid out as
/// <see cref="KroneckerTerm.Left"/>/<see cref="KroneckerTerm.Right"/> (coefficients folded in), zeros for slots without
/// such a term. Grows in slots by copying. Owns its tensors.
/// </summary>
internal sealed class KroneckerTermStack(long l0, long l1, long r0, long r1, Device device, ScalarType dtype) : ISlotStack<KroneckerTerm>
{
    public int Slots { get; private set; }
    public Tensor Left { get; private set; } = empty([0, l0, l1], dtype, device).DetachFromDisposeScope();
    public Tensor Right { get; private set; } = empty([0, r0, r1], dtype, device).DetachFromDisposeScope();

    public void Grow(int slots)
    {
        if (slots <= Slots) return;
        var left = SlotStacks.WithSlots(Left, slots);                                         // [slots, l0, l1]
        var right = SlotStacks.WithSlots(Right, slots);                                       // [slots, r0, r1]
        Left.Dispose();
        Right.Dispose();
        Left = left;
        Right = right;
        Slots = slots;
    }

    public void Write(int slot, KroneckerTerm? term)
    {
        if (term is null)
        {
            Left.select(0, slot).zero_();
            Right.select(0, slot).zero_();
            return;
        }
        Left.select(0, slot).copy_(term.Left);
        Right.select(0, slot).copy_(term.Right);
    }

    public void Dispose()
    {
        Left.Dispose();
        Right.Dispose();
    }
}
