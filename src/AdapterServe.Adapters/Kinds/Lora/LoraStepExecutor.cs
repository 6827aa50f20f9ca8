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
    /// <summary>Longest group (tokens) served from the slots; longer ones are prefills where the GEMMs dominate and padding would waste them.</summary>
    internal const int MaxSlotGroupTokens = 16;
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

    /// <summary>Groups served from the slot stacks in this step (0 when the slot path is not used).</summary>
    internal int SlotGroupCount => _slots?.GroupCount ?? 0;

    public void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight)
    {
        _slots?.Apply(layer, projection, x, y);

        // Every TorchSharp call costs tens of microseconds on the CPU and this runs for every adapter group of every
        // projection of every step: keep the calls per group to the minimum (views, two linears, one in-place add).
        foreach (var (g, modules) in _groups)
        {
            if (modules.Module(layer, projection) is not { } w) continue;
            if (w.InFeatures != x.size(1) || w.OutFeatures != y.size(1))
                throw new InvalidOperationException(
                    $"{g.Adapter} has {projection.ShortName()} of layer {layer} as [{w.OutFeatures}, {w.InFeatures}], the step has [{y.size(1)}, {x.size(1)}]");

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
                if (g.Scale != 1f) delta = TorchScalars.MulInPlace(delta, g.Scale);  // [n_g, d_out]
                g.AddRows(y, delta.dtype == y.dtype ? delta : delta.to(y.dtype));
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
        private readonly int _groupCount;          // S
        private readonly int _length;              // L
        private readonly Tensor? _rows;            // [S·L] int64 step rows (padding: row 0); null when they are 0..S·L−1 in order
        private readonly Tensor? _slotIndex;       // [S] int64 slots; null when they are consecutive (a narrow)
        private readonly int _firstSlot;
        private readonly Tensor? _weights;         // [S, L, 1] scale per row (0 on padding); null when all are 1

        private SlotStep(LoraSlotBank bank, List<(AdapterTokenGroup Group, LoraModules Modules)> groups)
        {
            _bank = bank;
            bank.GroupsServed += groups.Count;
            _modules = [.. groups.Select(g => g.Modules)];
            _groupCount = groups.Count;
            _length = groups.Max(g => (int)g.Group.Count);

            var rows = new long[_groupCount * _length];
            var weights = new float[_groupCount * _length];
            var slots = new long[_groupCount];
            bool inOrder = true, unitWeights = true;
            for (int s = 0; s < _groupCount; s++)
            {
                var g = groups[s].Group;
                slots[s] = g.Adapter.Slot!.Index;
                for (int t = 0; t < _length; t++)
                {
                    int i = s * _length + t;
                    bool real = t < g.Count;
                    rows[i] = real ? g.Tokens[t] : 0;
                    weights[i] = real ? g.Scale : 0f;
                    inOrder &= rows[i] == i;
                    unitWeights &= weights[i] == 1f;
                }
            }
            bool consecutive = true;
            for (int s = 1; s < _groupCount; s++) consecutive &= slots[s] == slots[0] + s;
            _firstSlot = (int)slots[0];

            var device = groups[0].Group.Adapter.Device;
            var dtype = groups[0].Group.Adapter.DType;
            using var inferenceOff = inference_mode(false);
            using var scope = NewDisposeScope();
            _rows = inOrder ? null : tensor(rows, ScalarType.Int64, device).DetachFromDisposeScope();
            _slotIndex = consecutive ? null : tensor(slots, ScalarType.Int64, device).DetachFromDisposeScope();
            _weights = unitWeights ? null
                : tensor(weights, ScalarType.Float32, device).view(_groupCount, _length, 1).to(dtype).DetachFromDisposeScope(); // [S, L, 1]
        }

        public int GroupCount => _groupCount;

        /// <summary>The slot path for the stackable short groups of <paramref name="groups"/> (null when there are too few); <paramref name="rest"/> gets the others.</summary>
        public static SlotStep? TryBuild(List<(AdapterTokenGroup Group, LoraModules Modules)> groups, out List<(AdapterTokenGroup, LoraModules)> rest)
        {
            rest = [];
            LoraSlotBank? bank = null;
            var stacked = new List<(AdapterTokenGroup Group, LoraModules Modules)>();
            foreach (var (g, modules) in groups)
            {
                bool candidate = g.Count > 0 && g.Count <= MaxSlotGroupTokens && g.Adapter.Slot is { } slot
                    && (bank is null || ReferenceEquals(LoraSlotBank.Of(slot.Table), bank)) && LoraSlotBank.CanStack(modules);
                if (candidate)
                {
                    bank ??= LoraSlotBank.Of(g.Adapter.Slot!.Table);
                    stacked.Add((g, modules));
                }
                else rest.Add((g, modules));
            }
            if (bank is null || stacked.Count < MinSlotGroups)
            {
                rest = [.. groups];
                return null;
            }
            var placed = new List<(AdapterTokenGroup Group, LoraModules Modules)>();
            foreach (var (g, modules) in stacked)
            {
                if (bank.TryPlace(g.Adapter, modules)) placed.Add((g, modules));
                else rest.Add((g, modules));
            }
            if (placed.Count < MinSlotGroups)
            {
                rest = [.. groups];
                return null;
            }
            return new SlotStep(bank, placed);
        }

        public void Apply(int layer, Projection projection, Tensor x, Tensor y)
        {
            bool targeted = false;
            foreach (var m in _modules) targeted |= m.Targets(layer, projection);
            if (!targeted || _bank.Projection(layer, projection) is not { } stack) return;
            if (stack.InFeatures != x.size(1) || stack.OutFeatures != y.size(1))
                throw new InvalidOperationException(
                    $"the adapter slots of {projection.ShortName()} of layer {layer} are [{stack.OutFeatures}, {stack.InFeatures}], the step has [{y.size(1)}, {x.size(1)}]");
            int rowCount = _groupCount * _length;
            bool identity = _rows is null && rowCount == x.size(0);

            var xs = identity ? x : _rows is null ? x.narrow(0, 0, rowCount) : x.index_select(0, _rows);   // [S·L, d_in]
            if (xs.dtype != stack.AT.dtype) xs = xs.to(stack.AT.dtype);
            var at = _slotIndex is null ? stack.AT.narrow(0, _firstSlot, _groupCount) : stack.AT.index_select(0, _slotIndex); // [S, d_in, r_max]
            var bt = _slotIndex is null ? stack.BT.narrow(0, _firstSlot, _groupCount) : stack.BT.index_select(0, _slotIndex); // [S, r_max, d_out]
            var xa = bmm(xs.reshape(_groupCount, _length, stack.InFeatures), at);                                  // [S, L, r_max]
            if (_weights is not null) xa.mul_(_weights);                                                       // [S, L, r_max] · scale (0 on padding)
            var delta = bmm(xa, bt).view(rowCount, stack.OutFeatures);                                          // [S·L, d_out]
            if (delta.dtype != y.dtype) delta = delta.to(y.dtype);
            if (identity) TorchScalars.AddInPlace(y, delta);
            else if (_rows is null) TorchScalars.AddInPlace(y.narrow(0, 0, rowCount), delta);
            else TorchScalars.IndexAddInPlace(y, 0, _rows, delta);
        }

        public void Dispose()
        {
            _rows?.Dispose();
            _slotIndex?.Dispose();
            _weights?.Dispose();
        }
    }
}
