using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>What a stack of S'MoRE trees holds: one projection of one layer, modules of one structure.</summary>
internal readonly record struct SmoreStackKey(int Layer, Projection Projection, SmoreSignature Signature);

/// <summary>
/// The S'MoRE modules of one <see cref="AdapterSlotTable"/>'s device-resident adapters, stacked by slot per (layer,
/// projection, <see cref="SmoreSignature"/>) (<see cref="SmoreStack"/>): modules of the same structure on the same
/// projection (the common case: one S'MoRE config per team) share one stack, so a step with many of them runs one fixed
/// sequence of batched calls per projection and structure, whatever the number of adapters (<see cref="SmoreSlotStep"/>).
/// Only equal structures stack (the tree's shapes and code paths follow from it; see the Kronecker terms for the same
/// rule); values that differ per adapter (weights, PReLU slopes, lora_alpha folded into B) live in the stacks. A slot
/// holds zeros in every stack its adapter has no module for. An adapter's modules are copied in the first time a step
/// uses it in its slot (<see cref="SlotStacks"/>).
/// </summary>
internal sealed class SmoreSlotBank(AdapterSlotTable table) : KeyedSlotStacks<SmoreStackKey, SmoreModule, SmoreStack>(table)
{
    public static SmoreSlotBank Of(AdapterSlotTable table) => table.KindState(t => new SmoreSlotBank(t));

    /// <summary>Makes sure <paramref name="adapter"/>'s modules are in its slot of every stack; false when it cannot be served from them.</summary>
    public bool TryPlace(LoadedAdapter adapter, SmoreWeights weights) => TryPlace(adapter,
        () => weights.Modules.ToDictionary(m => new SmoreStackKey(m.Layer, m.Projection, m.Signature)),
        module => new SmoreStack(module.Tree, CoveredSlots));
}

/// <summary>
/// One projection's S'MoRE modules of one structure, by slot: <see cref="SmoreTensors"/> with one tree per slot
/// (<c>[slots, ...]</c>; each slot's tensors laid out as its module's, zeros for a slot without such a module, which
/// routes finitely and adds nothing). Grows in slots by copying. Owns its tensors.
/// </summary>
internal sealed class SmoreStack : ISlotStack<SmoreModule>
{
    private bool[] _holds;                    // per slot: a module was written there (else zeros)

    /// <param name="like">A module of the stack's structure: the shapes, and the tensors every tree shares (labels, dense ids).</param>
    public SmoreStack(SmoreTensors like, int slots)
    {
        Tensors = like.Map(t => zeros([slots, .. t.shape[1..]], t.dtype, t.device).DetachFromDisposeScope(), t => t.clone().DetachFromDisposeScope());
        _holds = new bool[slots];
    }

    /// <summary>Every slot's tree, <c>[slots, ...]</c>.</summary>
    public SmoreTensors Tensors { get; private set; }
    public SmoreSignature Signature => Tensors.Signature;
    public int Slots => _holds.Length;

    /// <summary>Grows (keeping every slot's contents) to at least <paramref name="slots"/> slots. Outside inference_mode.</summary>
    public void Grow(int slots)
    {
        if (slots <= Slots) return;
        var grown = Tensors.Map(t => SlotStacks.WithSlots(t, slots), t => t.clone().DetachFromDisposeScope()); // [slots, ...]
        Tensors.Dispose();
        Tensors = grown;
        Array.Resize(ref _holds, slots);
    }

    /// <summary>Slot <paramref name="slot"/> := <paramref name="module"/>'s tree, or zeros when null. Outside inference_mode.</summary>
    public void Write(int slot, SmoreModule? module)
    {
        if (module is null)
        {
            if (!_holds[slot]) return;                                                          // already zeros
            foreach (var t in Tensors.PerTree) t?.select(0, slot).zero_();
            _holds[slot] = false;
            return;
        }
        if (!module.Signature.Equals(Signature))
            throw new InvalidOperationException($"an S'MoRE module of {module.Signature} does not fit the slot stack of {Signature}");
        foreach (var (stacked, own) in Tensors.PerTree.Zip(module.Tree.PerTree))
            stacked?.narrow(0, slot, 1).copy_(own!);                                            // [1, ...] ← the module's one tree
        _holds[slot] = true;
    }

    /// <summary>The trees of the layout's positions (<see cref="SlotRows.SelectSlots"/>), <c>[S, ...]</c>: views or copies in the caller's dispose scope; not to be disposed (it shares the stack's labels).</summary>
    public SmoreTensors Select(SlotRows rows) => Tensors.Map(rows.SelectSlots, t => t);

    public void Dispose() => Tensors.Dispose();
}
