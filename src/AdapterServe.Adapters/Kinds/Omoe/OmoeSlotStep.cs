using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Omoe;

/// <summary>
/// The slot path of the OMoE kind for one step: short OMoE groups of slotted adapters served from the
/// <see cref="OmoeSlotBank"/> stacks, one fixed sequence of calls per projection and <see cref="OmoeSignature"/>
/// (a class of at least <see cref="MinGroups"/> groups) whatever the number of distinct adapters, their routing or
/// top-K selections. A class's rows are laid out <c>[S groups, L = longest group]</c> (<see cref="SlotRows"/>; padding
/// rows weigh 0):
/// <list type="number">
/// <item>Routing for every group at once: <c>logits = bmm(x, W_gᵀ[slots])</c> <c>[S, L, n]</c>, then the per-group
/// maths (<see cref="OmoeModule.Gate"/>: softmax, top-K in expert order, renormalised), times the group's scale.</item>
/// <item>Expert coordinates: <c>H = bmm(A_all[slots], xᵀ)</c> <c>[S, n·r, L]</c>, then per (slot, expert)
/// <c>bmm(Hᵀ, Coordinates)</c> <c>[S·n, L, p]</c>, laid out per row as <c>[S·L, n, p]</c>.</item>
/// <item>The same Gram–Schmidt and combination as the per-group path (<see cref="OmoeModule.Combine"/>, one batched QR
/// over all S·L rows; or, for at most <see cref="OmoeModule.MaxNativeRows"/> rows on the CPU, the native mixture in one
/// call, <see cref="OmoeKernel"/>), then <c>Δ = bmm(v, Uᵀ[slots])</c> <c>[S, L, d_out]</c> and one add into the rows.</item>
/// </list>
/// Selections are recorded once per projection and class: top-K ids with <see cref="ExpertStepTally.RecordSlots"/>,
/// dense routing with <see cref="ExpertStepTally.RecordAll"/> (host only). Owns the step's small index tensors.
/// </summary>
internal sealed class OmoeSlotStep : IMixtureSlotStep
{
    /// <summary>
    /// Fewest groups of one signature served from the slots: per projection one group creates 28 tensors on its own path
    /// (37 with top-2), the slot path 43 (53) for all of them (<c>OmoeSlotTests</c>), so two groups already run fewer
    /// calls. With the native mixture (few rows on the CPU, <see cref="OmoeKernel"/>) one group makes 9 (11) and the
    /// slot path 19 (21): even at two groups the same calls, and the slot path's batched GEMMs.
    /// </summary>
    internal const int MinGroups = 2;

    private readonly OmoeSlotBank _bank;
    private readonly ExpertStepTally _tally;
    private readonly SignatureClass[] _classes;

    private OmoeSlotStep(OmoeSlotBank bank, ExpertStepTally tally, List<List<(AdapterTokenGroup Group, OmoeWeights Weights)>> classes)
    {
        _bank = bank;
        _tally = tally;
        _classes = [.. classes.Select(c => new SignatureClass(c))];
        bank.GroupsServed += classes.Sum(c => c.Count);
    }

    /// <summary>
    /// The slot path for the short, slotted OMoE groups of <paramref name="groups"/> whose signature has at least
    /// <see cref="MinGroups"/> of them (null when none has); <paramref name="rest"/> gets the groups it does not serve.
    /// </summary>
    public static OmoeSlotStep? TryBuild(List<(AdapterTokenGroup Group, OmoeWeights Weights)> groups, ExpertStepTally tally,
        out List<(AdapterTokenGroup Group, OmoeWeights Weights)> rest)
    {
        var placed = SlotGroups.Select(groups, MinGroups, OmoeSlotBank.Of, (bank, adapter, weights) => bank.TryPlace(adapter, weights),
            SlotGroups.SharingAClass(groups, MinGroups, (OmoeWeights weights) => new[] { OmoeSignature.Of(weights.Config) }), out var stacks, out rest);
        return placed is null ? null
            : new OmoeSlotStep(stacks!, tally, [.. placed.GroupBy(g => OmoeSignature.Of(g.Modules.Config)).Select(c => c.ToList())]);
    }

    /// <summary>Adds every slotted group's OMoE delta for (<paramref name="layer"/>, <paramref name="projection"/>) to its rows of <paramref name="y"/>.</summary>
    public void Apply(int layer, Projection projection, Tensor x, Tensor y)
    {
        foreach (var c in _classes) c.Apply(_bank, _tally, layer, projection, x, y);
    }

    public void Dispose()
    {
        foreach (var c in _classes) c.Dispose();
    }

    /// <summary>The groups of one signature in this step: their row layout and, with top-K, the mask of the selections that count.</summary>
    private sealed class SignatureClass : IDisposable
    {
        private readonly OmoeSignature _signature;
        private readonly (AdapterTokenGroup Group, OmoeWeights Weights)?[] _positions;   // per layout position (null: empty)
        private readonly SlotRows _layout;
        private Tensor? _valid;                    // [S, L, K] int64 0/1: real rows (top-K only); handed to the tally
        private bool _validHandedOver;

        public SignatureClass(List<(AdapterTokenGroup Group, OmoeWeights Weights)> groups)
        {
            _signature = OmoeSignature.Of(groups[0].Weights.Config);
            _layout = new SlotRows([.. groups.Select(g => g.Group)], slotRange: true);
            _positions = [.. _layout.Order.Select(i => i < 0 ? ((AdapterTokenGroup, OmoeWeights)?)null : groups[i])];
            if (_signature.TopK is { } k) _valid = _layout.SelectionMask(k);
        }

        public void Apply(OmoeSlotBank bank, ExpertStepTally tally, int layer, Projection projection, Tensor x, Tensor y)
        {
            var sites = new ExpertSite?[_positions.Length];
            bool targeted = false;
            for (int i = 0; i < _positions.Length; i++)
            {
                sites[i] = _positions[i]?.Weights.Module(layer, projection)?.Site;
                targeted |= sites[i] is not null;
            }
            if (!targeted || bank.Stack(new OmoeStackKey(layer, projection, _signature)) is not { } stack) return;
            AdapterTokenGroup.EnsureFits("the OMoE slots", layer, projection, stack.OutFeatures, stack.InFeatures, x, y);

            int s = _layout.Groups, l = _layout.Length, n = _signature.Experts, r = _signature.Rank;
            long dIn = stack.InFeatures, p = stack.BasisRank;

            var xs = _layout.Gather(x);                                                                     // [S·L, d_in]
            var xf = xs.dtype == ScalarType.Float32 ? xs : xs.to(ScalarType.Float32);
            var logits = bmm(xf.view(s, l, dIn), _layout.SelectSlots(stack.Router).transpose(1, 2));         // [S, L, n]

            var xa = xs.dtype == stack.A.dtype ? xs : xs.to(stack.A.dtype);
            var h = bmm(_layout.SelectSlots(stack.A), xa.view(s, l, dIn).transpose(1, 2));                  // [S, n·r, L] = A_all xᵀ per slot
            if (h.dtype != ScalarType.Float32) h = h.to(ScalarType.Float32);
            var byExpert = bmm(h.view((long)s * n, r, l).transpose(1, 2),
                    _layout.SelectSlots(stack.Coordinates).view((long)s * n, r, p));                       // [S·n, L, r]·[S·n, r, p] → [S·n, L, p]
            Tensor v;                                                                                       // [S·L, p] = scale · Σ_i c_i q^S_i
            Tensor? selected;                                                                               // [S·L, K] or [S, L, K]
            if (NativeMixtures.Runs(MixtureForm.Auto, xf, _layout.Count, OmoeModule.MaxNativeRows))
            {
                (v, selected) = OmoeKernel.Mix(logits, byExpert, s, n, _signature.TopK, _signature.RescaleNorm, (float)_signature.Eps, groupMajor: true, _layout.Scale);
                v = v.view(_layout.Count, p);
            }
            else
            {
                Tensor gates;                                                                               // [S·L, k]
                (gates, selected) = OmoeModule.Gate(logits.view((long)s * l, n), _signature.TopK);         // [S·L, k], [S·L, K]?
                if (_layout.Scale is not null) gates = gates.mul(_layout.Scale.view(_layout.Count, 1));      // scale · g, 0 on padding rows
                var coordinates = byExpert.view(s, n, l, p).permute(0, 2, 1, 3).reshape(_layout.Count, n, p); // [S·L, n, p]: S_i per row
                v = OmoeModule.Combine(coordinates, gates, selected, stack.Eps, _signature.RescaleNorm);
            }
            if (v.dtype != stack.Basis.dtype) v = v.to(stack.Basis.dtype);
            var delta = bmm(v.view(s, l, p), _layout.SelectSlots(stack.Basis));                             // [S, L, d_out] = U·v per slot
            _layout.AddTo(y, delta.view(_layout.Count, stack.OutFeatures));

            if (selected is null)
            {
                for (int i = 0; i < sites.Length; i++)
                    if (sites[i] is { } site) tally.RecordAll(site, _layout.Routed[i]);
                return;
            }
            tally.RecordSlots(sites, _layout.Routed, selected.view(s, l, _signature.Active), _valid!, n);          // [S, L, K] ids
            _validHandedOver = true;
        }

        public void Dispose()
        {
            _layout.Dispose();
            if (!_validHandedOver) _valid?.Dispose();
            _valid = null;
        }
    }
}
