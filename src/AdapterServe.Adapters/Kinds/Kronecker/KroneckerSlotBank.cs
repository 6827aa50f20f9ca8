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
internal sealed class KroneckerSlotBank(AdapterSlotTable table) : SlotStacks(table)
{
    private readonly Dictionary<KroneckerTermKey, KroneckerTermStack> _stacks = [];

    public static KroneckerSlotBank Of(AdapterSlotTable table) => table.KindState(t => new KroneckerSlotBank(t));

    /// <summary>Makes sure <paramref name="adapter"/>'s terms are in its slot of every stack; false when it cannot be served from them.</summary>
    public bool TryPlace(LoadedAdapter adapter, KroneckerModules modules) => TryPlace(adapter, slot =>
    {
        var own = new Dictionary<KroneckerTermKey, KroneckerTerm>();
        foreach (var module in modules.All)
            foreach (var term in module.Terms)
                own[KroneckerTermKey.Of(module, term)] = term;
        foreach (var (key, term) in own)
            if (!_stacks.ContainsKey(key)) _stacks[key] = new KroneckerTermStack(term.Left.size(0), term.Left.size(1), term.Right.size(0), term.Right.size(1), Device!, DType);
        // Every stack covers every slot written so far (a stack created now must hold the older adapters' zeros too).
        foreach (var (key, stack) in _stacks)
        {
            stack.Grow(CoveredSlots);
            stack.Write(slot.Index, own.GetValueOrDefault(key));
        }
    });

    public KroneckerTermStack? Stack(KroneckerTermKey key) => _stacks.GetValueOrDefault(key);

    public override void Dispose()
    {
        foreach (var s in _stacks.Values) s.Dispose();
        _stacks.Clear();
    }
}

/// <summary>
/// One stacked term layout: <c>Left [slots, l0, l1]</c> and <c>Right [slots, r0, r1]</c>, each slot's factors laid out as
/// <see cref="KroneckerTerm.Left"/>/<see cref="KroneckerTerm.Right"/> (coefficients folded in), zeros for slots without
/// such a term. Grows in slots by copying. Owns its tensors.
/// </summary>
internal sealed class KroneckerTermStack(long l0, long l1, long r0, long r1, Device device, ScalarType dtype) : IDisposable
{
    public int Slots { get; private set; }
    public Tensor Left { get; private set; } = empty([0, l0, l1], dtype, device).DetachFromDisposeScope();
    public Tensor Right { get; private set; } = empty([0, r0, r1], dtype, device).DetachFromDisposeScope();

    public void Grow(int slots)
    {
        if (slots <= Slots) return;
        var left = zeros([slots, l0, l1], Left.dtype, Left.device);
        var right = zeros([slots, r0, r1], Right.dtype, Right.device);
        if (Slots > 0)
        {
            left.narrow(0, 0, Slots).copy_(Left);
            right.narrow(0, 0, Slots).copy_(Right);
        }
        Left.Dispose();
        Right.Dispose();
        Left = left.DetachFromDisposeScope();
        Right = right.DetachFromDisposeScope();
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
