using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Kinds.LoraMixer;

/// <summary>
/// The slot path of the LoRA-Mixer kind for one step: S short mixer groups of S distinct (mixer, scale) pairs served
/// from the <see cref="MixerSlotBank"/> stacks with one fixed sequence of calls per projection, whatever S, the mixers'
/// expert counts, top-K or ranks. Rows are laid out <c>[S groups, L = longest group]</c> (padding rows weigh 0):
/// <list type="number">
/// <item>Routing for every group at once: <c>logits = bmm(x, W_gᵀ[slots]) + b_g[slots]</c> <c>[S, L, E_max]</c> (−∞ past a
/// mixer's experts), softmax, top-<c>K_max</c>, entries past a group's own K zeroed, renormalised per group where the
/// mixer renormalises, times the group's scale (0 on padding rows).</item>
/// <item>Gate weights scattered into <c>w [S, L, E]</c>; <c>H = bmm(x, Aᵀ[slots])</c> viewed <c>[S, L, E, r]</c> times w;
/// <c>Δ = bmm(H, Bᵀ[slots])</c> (+ <c>bmm(w, bias[slots])</c>), one add into the rows.</item>
/// </list>
/// Selections are recorded once per projection for all groups (<see cref="ExpertStepTally.RecordSlots"/>). Owns the
/// step's small index tensors.
/// </summary>
internal sealed class MixerSlotStep : IMixtureSlotStep
{
    /// <summary>Fewest mixer groups for which the slot path is used (one group is cheaper on its own module).</summary>
    internal const int MinGroups = 2;

    private readonly MixerSlotBank _bank;
    private readonly ExpertStepTally _tally;
    private readonly (AdapterTokenGroup Group, MixerWeights Weights)?[] _positions;   // per layout position (null: empty)
    private readonly SlotRows _layout;
    private readonly int _topK;                // K_max
    private readonly Tensor? _keepK;           // [S, 1, K_max] float32: 1 for k < K_s; null when every group has K_max
    private readonly Tensor? _renormalize;     // [S, 1, 1] float32 1/0 when the groups disagree; null when they agree
    private readonly bool _anyRenormalize;
    private Tensor? _valid;                    // [S, L, K_max] int64 0/1: the selections that count; handed to the tally
    private bool _validHandedOver;

    private MixerSlotStep(MixerSlotBank bank, ExpertStepTally tally, List<(AdapterTokenGroup Group, MixerWeights Weights)> groups)
    {
        _bank = bank;
        _tally = tally;
        bank.GroupsServed += groups.Count;
        _layout = new SlotRows([.. groups.Select(g => g.Group)], slotRange: true);
        int s = _layout.Groups;
        _topK = groups.Max(g => g.Weights.Config.TopK);
        _positions = [.. _layout.Order.Select(i => i < 0 ? ((AdapterTokenGroup, MixerWeights)?)null : groups[i])];

        var keep = new float[s * _topK];
        var renormalize = new float[s];
        for (int i = 0; i < s; i++)
        {
            if (_positions[i] is not var (_, w)) continue;                                  // an empty position: gates 0, nothing counted
            renormalize[i] = w.Config.Renormalize ? 1f : 0f;
            for (int k = 0; k < _topK; k++) keep[i * _topK + k] = k < w.Config.TopK ? 1f : 0f;
        }
        _anyRenormalize = renormalize.Any(r => r == 1f);
        bool agree = renormalize.All(r => r == renormalize[0]);

        var device = groups[0].Group.Adapter.Device;
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        _keepK = keep.All(k => k == 1f) ? null : tensor(keep, ScalarType.Float32, device).view(s, 1, _topK).DetachFromDisposeScope();
        _renormalize = agree ? null : tensor(renormalize, ScalarType.Float32, device).view(s, 1, 1).DetachFromDisposeScope();
        _valid = _layout.SelectionMask(_topK, i => groups[i].Weights.Config.TopK);        // [S, L, K_max]: each group's own K
    }

    /// <summary>
    /// The slot path for the short, slotted mixer groups of <paramref name="groups"/> (null when fewer than
    /// <see cref="MinGroups"/> qualify); <paramref name="rest"/> gets the groups it does not serve.
    /// </summary>
    public static MixerSlotStep? TryBuild(List<(AdapterTokenGroup Group, MixerWeights Weights)> groups, ExpertStepTally tally,
        out List<(AdapterTokenGroup Group, MixerWeights Weights)> rest)
    {
        var placed = SlotGroups.Select(groups, MinGroups, MixerSlotBank.Of, (bank, adapter, weights) => bank.TryPlace(adapter, weights),
            null, out var stacks, out rest);
        return placed is null ? null : new MixerSlotStep(stacks!, tally, placed);
    }

    /// <summary>Adds every slotted group's mixer delta for (<paramref name="layer"/>, <paramref name="projection"/>) to its rows of <paramref name="y"/>.</summary>
    public void Apply(int layer, Projection projection, Tensor x, Tensor y)
    {
        var sites = new ExpertSite?[_positions.Length];
        bool targeted = false;
        for (int i = 0; i < _positions.Length; i++)
        {
            sites[i] = _positions[i]?.Weights.Module(layer, projection)?.Site;
            targeted |= sites[i] is not null;
        }
        if (!targeted || _bank.Projection(layer, projection) is not { } stack) return;
        AdapterTokenGroup.EnsureFits("the mixer slots", layer, projection, stack.OutFeatures, stack.InFeatures, x, y);

        int s = _layout.Groups, l = _layout.Length, k = _topK, e = stack.Experts, r = stack.Rank;
        long dIn = stack.InFeatures;

        var xs = _layout.Gather(x);                                                                         // [S·L, d_in]
        var xf = xs.dtype == ScalarType.Float32 ? xs : xs.to(ScalarType.Float32);
        var logits = TorchScalars.AddInPlace(bmm(xf.view(s, l, dIn), _layout.SelectSlots(stack.Router).transpose(1, 2)), _layout.SelectSlots(stack.RouterBias)); // [S, L, E]
        var (top, ids) = softmax(logits, -1).topk(k, -1);                                                  // [S, L, K] p_T, ids
        if (_keepK is not null) top = top.mul(_keepK);                                                      // past a group's own K: 0
        if (_anyRenormalize)
        {
            var mass = top.sum(-1, keepdim: true);                                                         // [S, L, 1] Σ p_T
            if (_renormalize is not null) mass = TorchScalars.AddInPlace(TorchScalars.AddInPlace(mass, -1.0).mul_(_renormalize), 1.0); // 1 where the mixer does not renormalise
            top = top.div(mass);                                                                            // p̃
        }
        var gates = _layout.Scale is null ? top : top.mul(_layout.Scale);                                   // [S, L, K] scale · p̃, 0 on padding rows
        var xa = xs.dtype == stack.AT.dtype ? xs : xs.to(stack.AT.dtype);
        if (gates.dtype != stack.AT.dtype) gates = gates.to(stack.AT.dtype);

        var w = zeros([s, l, e], gates.dtype, gates.device).scatter_(2, ids, gates);                        // [S, L, E], 0 outside each row's top-K
        var h = bmm(xa.view(s, l, dIn), _layout.SelectSlots(stack.AT)).view(s, l, e, r).mul(w.unsqueeze(-1)).view(s, l, e * r); // [S, L, E·r]
        var delta = bmm(h, _layout.SelectSlots(stack.BT));                                                  // [S, L, d_out]
        if (stack.Bias is not null) TorchScalars.AddInPlace(delta, bmm(w, _layout.SelectSlots(stack.Bias))); // + w · s·bias
        _layout.AddTo(y, delta.view(_layout.Count, stack.OutFeatures));

        _tally.RecordSlots(sites, _layout.Routed, ids, _valid!, e);
        _validHandedOver = true;
    }

    public void Dispose()
    {
        _layout.Dispose();
        _keepK?.Dispose();
        _renormalize?.Dispose();
        if (!_validHandedOver) _valid?.Dispose();
        _valid = null;
    }
}
