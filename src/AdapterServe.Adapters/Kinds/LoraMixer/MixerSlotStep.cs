using AdapterServe.Adapters.Experts;
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
/// <item>Gate weights scattered into <c>w [S, L, E]</c>; <c>H = bmm(x, A[slots]ᵀ)</c> viewed <c>[S, L, E, r]</c> times w;
/// <c>Δ = bmm(H, Bᵀ[slots])</c> (+ <c>bmm(w, bias[slots])</c>), one add into the rows.</item>
/// </list>
/// Selections are recorded once per projection for all groups (<see cref="ExpertStepTally.RecordSlots"/>). Owns the
/// step's small index tensors.
/// </summary>
internal sealed class MixerSlotStep : IDisposable
{
    /// <summary>Longest group (tokens) served from the slots; longer ones are prefills, where the per-group path's GEMMs dominate.</summary>
    internal const int MaxGroupTokens = 16;
    /// <summary>Fewest mixer groups for which the slot path is used (one group is cheaper on its own module).</summary>
    internal const int MinGroups = 2;

    private readonly MixerSlotBank _bank;
    private readonly ExpertStepTally _tally;
    private readonly (AdapterTokenGroup Group, MixerWeights Weights)[] _groups;
    private readonly int _length;              // L
    private readonly int _topK;                // K_max
    private readonly long[] _routed;           // tokens per group
    private readonly Tensor? _rows;            // [S·L] int64 step rows (padding: row 0); null when they are 0..S·L−1 in order
    private readonly Tensor? _slotIndex;       // [S] int64 slots; null when consecutive (a narrow)
    private readonly int _firstSlot;
    private readonly Tensor _rowScale;         // [S, L, 1] float32: the group's scale, 0 on padding rows
    private readonly Tensor? _keepK;           // [S, 1, K_max] float32: 1 for k < K_s; null when every group has K_max
    private readonly Tensor? _renormalize;     // [S, 1, 1] float32 1/0 when the groups disagree; null when they agree
    private readonly bool _anyRenormalize;
    private Tensor? _valid;                    // [S, L, K_max] int64 0/1: the selections that count; handed to the tally
    private bool _validHandedOver;

    private MixerSlotStep(MixerSlotBank bank, ExpertStepTally tally, List<(AdapterTokenGroup Group, MixerWeights Weights)> groups)
    {
        _bank = bank;
        _tally = tally;
        _groups = [.. groups];
        bank.GroupsServed += groups.Count;
        int s = groups.Count;
        _length = groups.Max(g => (int)g.Group.Count);
        _topK = groups.Max(g => g.Weights.Config.TopK);
        _routed = [.. groups.Select(g => g.Group.Count)];

        var rows = new long[s * _length];
        var scales = new float[s * _length];
        var slots = new long[s];
        var keep = new float[s * _topK];
        var renormalize = new float[s];
        var valid = new long[s * _length * _topK];
        bool inOrder = true;
        for (int i = 0; i < s; i++)
        {
            var (g, w) = groups[i];
            slots[i] = g.Adapter.Slot!.Index;
            renormalize[i] = w.Config.Renormalize ? 1f : 0f;
            for (int k = 0; k < _topK; k++) keep[i * _topK + k] = k < w.Config.TopK ? 1f : 0f;
            for (int t = 0; t < _length; t++)
            {
                int row = i * _length + t;
                bool real = t < g.Count;
                rows[row] = real ? g.Tokens[t] : 0;
                scales[row] = real ? g.Scale : 0f;
                inOrder &= rows[row] == row;
                for (int k = 0; k < _topK; k++) valid[row * _topK + k] = real && k < w.Config.TopK ? 1 : 0;
            }
        }
        bool consecutive = true;
        for (int i = 1; i < s; i++) consecutive &= slots[i] == slots[0] + i;
        _firstSlot = (int)slots[0];
        _anyRenormalize = renormalize.Any(r => r == 1f);
        bool agree = renormalize.All(r => r == renormalize[0]);

        var device = groups[0].Group.Adapter.Device;
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        _rows = inOrder ? null : tensor(rows, ScalarType.Int64, device).DetachFromDisposeScope();
        _slotIndex = consecutive ? null : tensor(slots, ScalarType.Int64, device).DetachFromDisposeScope();
        _rowScale = tensor(scales, ScalarType.Float32, device).view(s, _length, 1).DetachFromDisposeScope();
        _keepK = keep.All(k => k == 1f) ? null : tensor(keep, ScalarType.Float32, device).view(s, 1, _topK).DetachFromDisposeScope();
        _renormalize = agree ? null : tensor(renormalize, ScalarType.Float32, device).view(s, 1, 1).DetachFromDisposeScope();
        _valid = tensor(valid, ScalarType.Int64, device).view(s, _length, _topK).DetachFromDisposeScope();
    }

    public int GroupCount => _groups.Length;

    /// <summary>
    /// The slot path for the short, slotted mixer groups of <paramref name="groups"/> (null when fewer than
    /// <see cref="MinGroups"/> qualify); <paramref name="rest"/> gets the groups it does not serve.
    /// </summary>
    public static MixerSlotStep? TryBuild(List<(AdapterTokenGroup Group, MixerWeights Weights)> groups, ExpertStepTally tally,
        out List<(AdapterTokenGroup Group, MixerWeights Weights)> rest)
    {
        rest = [];
        MixerSlotBank? bank = null;
        var stacked = new List<(AdapterTokenGroup Group, MixerWeights Weights)>();
        foreach (var (g, w) in groups)
        {
            bool candidate = g.Count > 0 && g.Count <= MaxGroupTokens && g.Adapter.Slot is { } slot
                && (bank is null || ReferenceEquals(MixerSlotBank.Of(slot.Table), bank));
            if (candidate)
            {
                bank ??= MixerSlotBank.Of(g.Adapter.Slot!.Table);
                stacked.Add((g, w));
            }
            else rest.Add((g, w));
        }
        if (bank is null || stacked.Count < MinGroups)
        {
            rest = [.. groups];
            return null;
        }
        var placed = new List<(AdapterTokenGroup Group, MixerWeights Weights)>();
        foreach (var (g, w) in stacked)
        {
            if (bank.TryPlace(g.Adapter, w)) placed.Add((g, w));
            else rest.Add((g, w));
        }
        if (placed.Count < MinGroups)
        {
            rest = [.. groups];
            return null;
        }
        return new MixerSlotStep(bank, tally, placed);
    }

    /// <summary>Adds every slotted group's mixer delta for (<paramref name="layer"/>, <paramref name="projection"/>) to its rows of <paramref name="y"/>.</summary>
    public void Apply(int layer, Projection projection, Tensor x, Tensor y)
    {
        var sites = new ExpertSite?[_groups.Length];
        bool targeted = false;
        for (int i = 0; i < _groups.Length; i++)
        {
            sites[i] = _groups[i].Weights.Module(layer, projection)?.Site;
            targeted |= sites[i] is not null;
        }
        if (!targeted || _bank.Projection(layer, projection) is not { } stack) return;
        if (stack.InFeatures != x.size(1) || stack.OutFeatures != y.size(1))
            throw new InvalidOperationException(
                $"the mixer slots of {projection.ShortName()} of layer {layer} are [{stack.OutFeatures}, {stack.InFeatures}], the step has [{y.size(1)}, {x.size(1)}]");

        int s = _groups.Length, l = _length, k = _topK, e = stack.Experts, r = stack.Rank;
        long rowCount = (long)s * l, dIn = stack.InFeatures, dOut = stack.OutFeatures;
        bool identity = _rows is null && rowCount == x.size(0);
        Tensor Slots(Tensor t) => _slotIndex is null ? t.narrow(0, _firstSlot, s) : t.index_select(0, _slotIndex);

        var xs = identity ? x : _rows is null ? x.narrow(0, 0, rowCount) : x.index_select(0, _rows);      // [S·L, d_in]
        var xf = xs.dtype == ScalarType.Float32 ? xs : xs.to(ScalarType.Float32);
        var logits = TorchScalars.AddInPlace(bmm(xf.view(s, l, dIn), Slots(stack.Router).transpose(1, 2)), Slots(stack.RouterBias)); // [S, L, E]
        var (top, ids) = softmax(logits, -1).topk(k, -1);                                                  // [S, L, K] p_T, ids
        if (_keepK is not null) top = top.mul(_keepK);                                                      // past a group's own K: 0
        if (_anyRenormalize)
        {
            var mass = top.sum(-1, keepdim: true);                                                         // [S, L, 1] Σ p_T
            if (_renormalize is not null) mass = TorchScalars.AddInPlace(TorchScalars.AddInPlace(mass, -1.0).mul_(_renormalize), 1.0); // 1 where the mixer does not renormalise
            top = top.div(mass);                                                                            // p̃
        }
        var gates = top.mul(_rowScale);                                                                     // [S, L, K] scale · p̃, 0 on padding rows
        var xa = xs.dtype == stack.A.dtype ? xs : xs.to(stack.A.dtype);
        if (gates.dtype != stack.A.dtype) gates = gates.to(stack.A.dtype);

        var w = zeros([s, l, e], gates.dtype, gates.device).scatter_(2, ids, gates);                        // [S, L, E], 0 outside each row's top-K
        var h = bmm(xa.view(s, l, dIn), Slots(stack.A).transpose(1, 2)).view(s, l, e, r).mul(w.unsqueeze(-1)).view(s, l, e * r); // [S, L, E·r]
        var delta = bmm(h, Slots(stack.BT));                                                                // [S, L, d_out]
        if (stack.Bias is not null) TorchScalars.AddInPlace(delta, bmm(w, Slots(stack.Bias)));             // + w · s·bias
        delta = delta.view(rowCount, dOut);
        if (delta.dtype != y.dtype) delta = delta.to(y.dtype);
        if (identity) TorchScalars.AddInPlace(y, delta);
        else if (_rows is null) TorchScalars.AddInPlace(y.narrow(0, 0, rowCount), delta);
        else TorchScalars.IndexAddInPlace(y, 0, _rows, delta);

        _tally.RecordSlots(sites, _routed, ids, _valid!, e);
        _validHandedOver = true;
    }

    public void Dispose()
    {
        _rows?.Dispose();
        _slotIndex?.Dispose();
        _rowScale.Dispose();
        _keepK?.Dispose();
        _renormalize?.Dispose();
        if (!_validHandedOver) _valid?.Dispose();
        _valid = null;
    }
}
