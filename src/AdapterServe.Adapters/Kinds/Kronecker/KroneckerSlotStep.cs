using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// The slot path of the Kronecker kinds for one step: the R rows of several short LoKr/MoKA groups, each row with its
/// adapter's slot and scale, served from the <see cref="KroneckerSlotBank"/> stacks. Per projection and distinct term
/// layout the step's groups use there: the row's factors gathered by slot (<c>[R, ·, ·]</c>; Kronecker factors are a few
/// hundred numbers, so this copy is small) and two batched GEMMs, <c>A_t X_t B_tᵀ</c> per row; then one scale and one
/// add into the rows. The calls do not grow with the number of distinct adapters.
/// </summary>
internal sealed class KroneckerSlotStep : IDisposable
{
    /// <summary>Longest group (tokens) served from the slots; longer ones are prefills.</summary>
    internal const int MaxGroupTokens = 16;
    /// <summary>Fewest groups for which the slot path is used: a group costs about four calls per term on its own path.</summary>
    internal const int MinGroups = 3;

    private readonly KroneckerSlotBank _bank;
    private readonly (AdapterTokenGroup Group, KroneckerModules Modules)[] _groups;
    private readonly long _rowCount;           // R
    private readonly Tensor? _rows;            // [R] int64 step rows; null when they are 0..R−1 in order
    private readonly Tensor _rowSlot;          // [R] int64 the row's adapter slot
    private readonly Tensor? _rowScale;        // [R, 1] the row's scale; null when all are 1

    private KroneckerSlotStep(KroneckerSlotBank bank, List<(AdapterTokenGroup Group, KroneckerModules Modules)> groups)
    {
        _bank = bank;
        _groups = [.. groups];
        bank.GroupsServed += groups.Count;
        var rows = new List<long>();
        var slots = new List<long>();
        var scales = new List<float>();
        foreach (var (g, _) in groups)
            foreach (int t in g.Tokens)
            {
                rows.Add(t);
                slots.Add(g.Adapter.Slot!.Index);
                scales.Add(g.Scale);
            }
        _rowCount = rows.Count;
        bool inOrder = rows.Select((r, i) => r == i).All(b => b);
        var device = groups[0].Group.Adapter.Device;
        var dtype = groups[0].Group.Adapter.DType;
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        _rows = inOrder ? null : tensor(rows.ToArray(), ScalarType.Int64, device).DetachFromDisposeScope();
        _rowSlot = tensor(slots.ToArray(), ScalarType.Int64, device).DetachFromDisposeScope();
        _rowScale = scales.All(s => s == 1f) ? null : tensor(scales.ToArray(), ScalarType.Float32, device).view(_rowCount, 1).to(dtype).DetachFromDisposeScope();
    }

    public int GroupCount => _groups.Length;

    /// <summary>The slot path for the short, slotted groups of <paramref name="groups"/> (null when too few qualify); <paramref name="rest"/> gets the others.</summary>
    public static KroneckerSlotStep? TryBuild(List<(AdapterTokenGroup Group, KroneckerModules Modules)> groups, out List<(AdapterTokenGroup Group, KroneckerModules Modules)> rest)
    {
        rest = [];
        KroneckerSlotBank? bank = null;
        var stacked = new List<(AdapterTokenGroup Group, KroneckerModules Modules)>();
        foreach (var (g, m) in groups)
        {
            bool candidate = g.Count > 0 && g.Count <= MaxGroupTokens && g.Adapter.Slot is { } slot
                && (bank is null || ReferenceEquals(KroneckerSlotBank.Of(slot.Table), bank));
            if (candidate)
            {
                bank ??= KroneckerSlotBank.Of(g.Adapter.Slot!.Table);
                stacked.Add((g, m));
            }
            else rest.Add((g, m));
        }
        if (bank is null || stacked.Count < MinGroups)
        {
            rest = [.. groups];
            return null;
        }
        var placed = new List<(AdapterTokenGroup Group, KroneckerModules Modules)>();
        foreach (var (g, m) in stacked)
        {
            if (bank.TryPlace(g.Adapter, m)) placed.Add((g, m));
            else rest.Add((g, m));
        }
        if (placed.Count < MinGroups)
        {
            rest = [.. groups];
            return null;
        }
        return new KroneckerSlotStep(bank, placed);
    }

    /// <summary>Adds every slotted group's <c>scale · x ΔWᵀ</c> at (<paramref name="layer"/>, <paramref name="projection"/>) to its rows of <paramref name="y"/>.</summary>
    public void Apply(int layer, Projection projection, Tensor x, Tensor y)
    {
        var keys = new HashSet<KroneckerTermKey>();
        foreach (var (_, modules) in _groups)
            if (modules.Module(layer, projection) is { } module)
                foreach (var term in module.Terms) keys.Add(KroneckerTermKey.Of(module, term));
        if (keys.Count == 0) return;
        long r = _rowCount, dOut = y.size(1);
        bool identity = _rows is null && r == x.size(0);
        var xs = identity ? x : _rows is null ? x.narrow(0, 0, r) : x.index_select(0, _rows);     // [R, d_in]

        Tensor? delta = null;                                                                       // [R, d_out]
        foreach (var key in keys)
        {
            var stack = _bank.Stack(key) ?? throw new InvalidOperationException($"no slot stack for the Kronecker term {key}");
            var (ma, na, mb, nb, k) = (key.Shape.Ma, key.Shape.Na, key.Shape.Mb, key.Shape.Nb, key.Count);
            if (xs.dtype != stack.Left.dtype) xs = xs.to(stack.Left.dtype);
            var xt = xs.view(r, na, nb);                                                            // [R, Na, Nb]
            var left = stack.Left.index_select(0, _rowSlot);                                        // [R, Ma·k, Na] or [R, Ma, k·Na]
            var right = stack.Right.index_select(0, _rowSlot);                                      // [R, Mb, k·Nb] or [R, k·Mb, Nb]
            Tensor term;                                                                            // [R, Ma, Mb]
            if (key.LeftFirst)
            {
                var u = bmm(left, xt);                                                              // [R, Ma·k, Nb]
                if (k > 1) u = u.view(r, ma, (long)k * nb);                                         // [R, Ma, k·Nb]
                term = bmm(u, right.transpose(1, 2));                                               // [R, Ma, Mb]
            }
            else
            {
                var t = bmm(xt, right.transpose(1, 2));                                             // [R, Na, k·Mb]
                if (k > 1) t = t.view(r, na, k, mb).permute(0, 2, 1, 3).reshape(r, (long)k * na, mb); // [R, k·Na, Mb]
                term = bmm(left, t);                                                                // [R, Ma, Mb]
            }
            delta = delta is null ? term.view(r, dOut) : TorchScalars.AddInPlace(delta, term.view(r, dOut));
        }
        if (_rowScale is not null) delta = delta!.mul(_rowScale);                                   // [R, d_out] · the row's scale
        if (delta!.dtype != y.dtype) delta = delta.to(y.dtype);
        if (identity) TorchScalars.AddInPlace(y, delta);
        else if (_rows is null) TorchScalars.AddInPlace(y.narrow(0, 0, r), delta);
        else TorchScalars.IndexAddInPlace(y, 0, _rows, delta);
    }

    public void Dispose()
    {
        _rows?.Dispose();
        _rowSlot.Dispose();
        _rowScale?.Dispose();
    }
}
