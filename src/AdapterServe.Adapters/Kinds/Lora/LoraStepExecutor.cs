using AdapterServe.Modeling;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>
/// The LoRA family's share of one step. Two paths, chosen per group when the step is built:
/// <list type="bullet">
/// <item><b>Slots</b> (SGMV-style, a constant number of calls per projection): plain deltas of device-resident
/// adapters (<see cref="LoraSlotBank"/>) whose groups are short (decode) are served together. The groups' rows are
/// laid out as <c>[S groups, L = longest group]</c> (shorter groups padded with row 0 at weight 0):
/// <c>xa = bmm(x[rows], Aᵀ[slots]) · w</c> → <c>[S, L, r_max]</c>, <c>y[rows] += bmm(xa, Bᵀ[slots])</c>, where <c>w</c> is
/// the group's scale (0 on padding). About nine calls per projection, whatever the number of distinct adapters.</item>
/// <item><b>Per group</b>: each (adapter, scale) group costs one gather of its rows (a narrow when they are
/// contiguous) and two small GEMMs <c>(x_g Aᵀ) Bᵀ</c>, added in place. Used for a step with a single stackable group
/// (fewer calls than the slot path), long (prefill) groups, adapters without a slot, biases, ranks above
/// <see cref="LoraSlotBank.MaxRank"/>, and DoRA, whose rows are rescaled:
/// <c>y = (m / ‖W0 + scale·ΔW‖_row) ⊙ (x W0ᵀ + scale·x ΔWᵀ)</c>.</item>
/// </list>
/// </summary>
internal sealed class LoraStepExecutor : IAdapterStepExecutor
{
    /// <summary>
    /// Fewest stackable groups for which the slot path is used: a group costs 4–5 calls on the per-group path
    /// (rows, two linears, add, scale), the slot path 8–10 in all, so it pays from three groups on.
    /// </summary>
    internal const int MinSlotGroups = 3;

    private readonly (AdapterTokenGroup Group, LoraModules Modules)[] _groups;   // the per-group path
    private readonly SlotStep? _slots;

    public LoraStepExecutor(IReadOnlyList<AdapterTokenGroup> groups)
    {
        var all = groups.Select(g => (Group: g, Modules: g.Adapter.LoraModules())).ToList();
        _slots = SlotStep.TryBuild(all, out var rest);
        _groups = [.. rest];
    }

    public void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight)
    {
        _slots?.Apply(layer, projection, x, y);

        // Every TorchSharp call costs tens of microseconds on the CPU and this runs for every adapter group of every
        // projection of every step: keep the calls per group to the minimum (views, two linears, one in-place add).
        foreach (var (g, modules) in _groups)
        {
            if (modules.Module(layer, projection) is not { } w) continue;
            AdapterTokenGroup.EnsureFits(g.Adapter, layer, projection, w.OutFeatures, w.InFeatures, x, y);

            var xg = g.Rows(x);                                                      // [n_g, d_in]
            if (xg.dtype != w.A.dtype) xg = xg.to(w.A.dtype);
            var xa = linear(xg, w.A);                                                // [n_g, R]
            if (w.Bias is null && !w.IsDora && g.IsContiguous && xa.dtype == y.dtype)
            {
                // The common case in two calls: y[rows] += scale · xa Bᵀ, one GEMM accumulating into y's rows in place.
                g.RowsView(y).addmm_(xa, w.BT, 1f, g.Scale);                         // [n_g, d_out]
                continue;
            }
            var delta = xa.mm(w.BT);                                                 // [n_g, d_out]
            if (w.Bias is not null) delta = TorchScalars.Add(delta, w.Bias);         // + s·bias, [d_out] broadcast

            if (w.IsDora)
            {
                // Only reachable for a DoRA adapter alone on its sequences: these rows have no other contribution.
                var rowScale = w.DoraRowScale(g.Scale, baseWeight);                  // [d_out] = m / ‖W0 + scale·ΔW‖_row
                var merged = TorchScalars.Add(g.Rows(y).to(w.A.dtype), delta, g.Scale); // [n_g, d_out] = x W0ᵀ + scale·x ΔWᵀ
                g.SetRows(y, merged.mul(rowScale).to(y.dtype));                      // [n_g, d_out] rows rescaled
            }
            else
            {
                g.AddScaledRows(y, delta);                                           // [n_g, d_out]
            }
        }
    }

    public void Complete() => _slots?.Dispose();

    public void Abandon() => _slots?.Dispose();

    /// <summary>The slot path's share of one step: its groups, their row layout and weights, built once per step.</summary>
    private sealed class SlotStep : IDisposable
    {
        private readonly LoraSlotBank _bank;
        private readonly LoraModules[] _modules;
        private readonly SlotRows _layout;

        private SlotStep(LoraSlotBank bank, List<(AdapterTokenGroup Group, LoraModules Modules)> groups)
        {
            _bank = bank;
            bank.GroupsServed += groups.Count;
            _modules = [.. groups.Select(g => g.Modules)];
            _layout = new SlotRows([.. groups.Select(g => g.Group)], slotRange: true);
        }

        /// <summary>The slot path for the stackable short groups of <paramref name="groups"/> (null when there are too few); <paramref name="rest"/> gets the others.</summary>
        public static SlotStep? TryBuild(List<(AdapterTokenGroup Group, LoraModules Modules)> groups, out List<(AdapterTokenGroup, LoraModules)> rest)
        {
            var placed = SlotGroups.Select(groups, MinSlotGroups, LoraSlotBank.Of,
                (bank, adapter, modules) => bank.TryPlace(adapter, modules), LoraSlotBank.CanStack, out var stacks, out var others);
            rest = [.. others];
            return placed is null ? null : new SlotStep(stacks!, placed);
        }

        public void Apply(int layer, Projection projection, Tensor x, Tensor y)
        {
            bool targeted = false;
            foreach (var m in _modules) targeted |= m.Targets(layer, projection);
            if (!targeted || _bank.Projection(layer, projection) is not { } stack) return;
            AdapterTokenGroup.EnsureFits("the adapter slots", layer, projection, stack.OutFeatures, stack.InFeatures, x, y);

            var xs = _layout.Gather(x);                                                                      // [S·L, d_in]
            if (xs.dtype != stack.AT.dtype) xs = xs.to(stack.AT.dtype);
            var xa = bmm(xs.reshape(_layout.Groups, _layout.Length, stack.InFeatures), _layout.SelectSlots(stack.AT)); // [S, L, r_max]
            if (_layout.Scale is not null) xa.mul_(_layout.Scale);                                          // [S, L, r_max] · scale (0 on padding)
            _layout.AddTo(y, bmm(xa, _layout.SelectSlots(stack.BT)).view(_layout.Count, stack.OutFeatures)); // y[rows] += [S·L, d_out]
        }

        public void Dispose() => _layout.Dispose();
    }
}
