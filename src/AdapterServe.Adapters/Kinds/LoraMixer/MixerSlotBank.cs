using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.LoraMixer;

/// <summary>
/// The LoRA-Mixers of one <see cref="AdapterSlotTable"/>'s device-resident adapters, stacked per routed projection by
/// slot (<see cref="MixerStack"/>), so a step with several mixers runs one fixed sequence of batched calls per
/// projection whatever the number of distinct mixers (<see cref="MixerSlotStep"/>), as the LoRA slots do for plain
/// deltas. Every stack has the bank's widest expert count <c>E_max</c> and rank <c>r_max</c>: a mixer with fewer
/// experts has its extra router logits at −∞ (never chosen), smaller ranks are zero padded, and a slot whose mixer
/// does not route a projection holds zeros there (it contributes nothing). A mixer's tensors are copied in the first
/// time a step uses it in its slot (<see cref="SlotStacks"/>).
/// </summary>
internal sealed class MixerSlotBank(AdapterSlotTable table) : SlotStacks(table)
{
    private readonly Dictionary<(int Layer, Projection Projection), MixerStack> _projections = [];

    public static MixerSlotBank Of(AdapterSlotTable table) => table.KindState(t => new MixerSlotBank(t));

    /// <summary>E_max: every slot's router has this many logits.</summary>
    public int Experts { get; private set; }
    /// <summary>r_max: every expert's block has this many rows.</summary>
    public int Rank { get; private set; }

    /// <summary>
    /// Makes sure <paramref name="adapter"/>'s mixer is in its slot of every stack; false when it cannot be served from
    /// the stacks (no slot of this table, another device or dtype).
    /// </summary>
    public bool TryPlace(LoadedAdapter adapter, MixerWeights weights) => TryPlace(adapter, slot =>
    {
        foreach (var (module, site) in weights.Modules)
        {
            Experts = Math.Max(Experts, module.Experts);
            Rank = Math.Max(Rank, module.Rank);
            if (!_projections.ContainsKey((site.Layer, site.Projection)))
                _projections[(site.Layer, site.Projection)] = new MixerStack(module.InFeatures, module.OutFeatures, Device!, DType);
        }
        // Every stack covers every slot written so far (a stack created now must hold the older mixers' zeros too).
        foreach (var ((layer, projection), stack) in _projections)
        {
            stack.Grow(CoveredSlots, Experts, Rank);
            stack.Write(slot.Index, weights.Module(layer, projection)?.Module);
        }
    });

    /// <summary>The stack of one projection, or null when no mixer placed so far routes it.</summary>
    public MixerStack? Projection(int layer, Projection projection) => _projections.GetValueOrDefault((layer, projection));

    public override void Dispose()
    {
        foreach (var s in _projections.Values) s.Dispose();
        _projections.Clear();
    }
}

/// <summary>
/// One projection's stacked mixers, by slot: routers <c>[slots, E, d_in]</c> (float32) with their biases
/// <c>[slots, 1, E]</c> (−∞ past a mixer's own experts), <c>Aᵀ [slots, d_in, E·r]</c>, <c>Bᵀ [slots, E·r, d_out]</c> and
/// the experts' biases <c>[slots, E, d_out]</c> (allocated once a mixer with expert biases is placed); expert e of a slot
/// owns columns <c>e·r .. e·r + r_e</c> of Aᵀ and those rows of Bᵀ. Both are stored as the right operand of their
/// <c>bmm</c> reads them (one token per slot row: 32 against 42 µs per A-side <c>bmm</c> on a transposed view, 4 slots of
/// 6 × r16, 576 → 1536). Grows by copying into larger tensors.
/// </summary>
internal sealed class MixerStack(long inFeatures, long outFeatures, Device device, ScalarType dtype) : IDisposable
{
    private int[] _experts = [];                                   // per slot: the experts of the mixer written there (0: none)

    public long InFeatures { get; } = inFeatures;
    public long OutFeatures { get; } = outFeatures;
    public int Slots { get; private set; }
    public int Experts { get; private set; }
    public int Rank { get; private set; }
    /// <summary><c>[Slots, E, d_in]</c>, float32.</summary>
    public Tensor Router { get; private set; } = empty([0, 0, inFeatures], ScalarType.Float32, device).DetachFromDisposeScope();
    /// <summary><c>[Slots, 1, E]</c>, float32: b_g, 0 without one, −∞ past the slot's experts.</summary>
    public Tensor RouterBias { get; private set; } = empty([0, 1, 0], ScalarType.Float32, device).DetachFromDisposeScope();
    /// <summary><c>[Slots, d_in, E·r]</c>.</summary>
    public Tensor AT { get; private set; } = empty([0, inFeatures, 0], dtype, device).DetachFromDisposeScope();
    /// <summary><c>[Slots, E·r, d_out]</c>, scalings folded in.</summary>
    public Tensor BT { get; private set; } = empty([0, 0, outFeatures], dtype, device).DetachFromDisposeScope();
    /// <summary><c>[Slots, E, d_out]</c> = s_e·bias_e, or null while no placed mixer has expert biases here.</summary>
    public Tensor? Bias { get; private set; }

    /// <summary>Slot <paramref name="slot"/> := <paramref name="module"/> (padded), or zeros when null. Outside inference_mode.</summary>
    public void Write(int slot, MixerModule? module)
    {
        if (module is not null && (module.InFeatures != InFeatures || module.OutFeatures != OutFeatures))
            throw new InvalidOperationException($"a mixer module of [{module.OutFeatures}, {module.InFeatures}] does not fit its slot stack [{OutFeatures}, {InFeatures}]");
        if (module?.BiasAll is not null) AddBias();
        var router = Router.select(0, slot);                                           // [E, d_in]
        var routerBias = RouterBias.select(0, slot);                                   // [1, E]
        var at = AT.select(0, slot).view(InFeatures, Experts, Rank);                   // [d_in, E, r]
        var bt = BT.select(0, slot).view(Experts, Rank, OutFeatures);                  // [E, r, d_out]
        router.zero_();
        routerBias.zero_();
        at.zero_();
        bt.zero_();
        Bias?.select(0, slot).zero_();
        _experts[slot] = 0;
        if (module is null) return;                                                    // zeros: finite gates, zero delta

        int e = module.Experts, r = module.Rank;
        router.narrow(0, 0, e).copy_(module.Router);
        if (module.RouterBias is not null) routerBias.narrow(1, 0, e).copy_(module.RouterBias.unsqueeze(0));
        if (e < Experts) TorchScalars.FillInPlace(routerBias.narrow(1, e, Experts - e), double.NegativeInfinity);
        at.narrow(1, 0, e).narrow(2, 0, r).copy_(module.AAll.view(e, r, InFeatures).permute(2, 0, 1));   // [d_in, e, r] ← A_allᵀ
        bt.narrow(0, 0, e).narrow(1, 0, r).copy_(module.BTAll.view(e, r, OutFeatures));
        if (module.BiasAll is not null) Bias!.select(0, slot).narrow(0, 0, e).copy_(module.BiasAll);
        _experts[slot] = e;
    }

    /// <summary>Grows (keeping every slot's contents) to at least <paramref name="slots"/> slots of <paramref name="experts"/> experts of rank <paramref name="rank"/>. Outside inference_mode.</summary>
    public void Grow(int slots, int experts, int rank)
    {
        if (slots <= Slots && experts <= Experts && rank <= Rank) return;
        slots = Math.Max(slots, Slots);
        experts = Math.Max(experts, Experts);
        rank = Math.Max(rank, Rank);
        var router = zeros([slots, experts, InFeatures], ScalarType.Float32, Router.device);      // [slots, E, d_in]
        var routerBias = zeros([slots, 1, experts], ScalarType.Float32, Router.device);           // [slots, 1, E]
        var at = zeros([slots, InFeatures, experts * rank], AT.dtype, AT.device);                  // [slots, d_in, E·r]
        var bt = zeros([slots, experts * rank, OutFeatures], BT.dtype, BT.device);                 // [slots, E·r, d_out]
        var bias = Bias is null ? null : zeros([slots, experts, OutFeatures], Bias.dtype, Bias.device); // [slots, E, d_out]
        if (Slots > 0 && Experts > 0)
        {
            router.narrow(0, 0, Slots).narrow(1, 0, Experts).copy_(Router);
            routerBias.narrow(0, 0, Slots).narrow(2, 0, Experts).copy_(RouterBias);
            at.narrow(0, 0, Slots).view(Slots, InFeatures, experts, rank).narrow(2, 0, Experts).narrow(3, 0, Rank)
                .copy_(AT.view(Slots, InFeatures, Experts, Rank));
            bt.narrow(0, 0, Slots).view(Slots, experts, rank, OutFeatures).narrow(1, 0, Experts).narrow(2, 0, Rank)
                .copy_(BT.view(Slots, Experts, Rank, OutFeatures));
            bias?.narrow(0, 0, Slots).narrow(1, 0, Experts).copy_(Bias!);
            // The new expert columns of a slot that holds a mixer are past its experts: never chosen.
            if (experts > Experts)
                for (int s = 0; s < Slots; s++)
                    if (_experts[s] > 0) TorchScalars.FillInPlace(routerBias.select(0, s).narrow(1, Experts, experts - Experts), double.NegativeInfinity);
        }
        Array.Resize(ref _experts, slots);
        Dispose();                                                                                 // the old, smaller tensors
        Router = router.DetachFromDisposeScope();
        RouterBias = routerBias.DetachFromDisposeScope();
        AT = at.DetachFromDisposeScope();
        BT = bt.DetachFromDisposeScope();
        Bias = bias?.DetachFromDisposeScope();
        Slots = slots;
        Experts = experts;
        Rank = rank;
    }

    private void AddBias() => Bias ??= zeros([Slots, Experts, OutFeatures], AT.dtype, AT.device).DetachFromDisposeScope(); // [slots, E, d_out]

    public void Dispose()
    {
        Router.Dispose();
        RouterBias.Dispose();
        AT.Dispose();
        BT.Dispose();
        Bias?.Dispose();
    }
}
