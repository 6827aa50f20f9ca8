using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// The slot path of the Kronecker kinds for one step: the R rows of several short LoKr/MoKA groups (<see cref="SlotRows"/>;
/// padding rows weigh 0), each row with its adapter's slot and scale, served from the <see cref="KroneckerSlotBank"/> stacks. Per projection and distinct term
/// layout the step's groups use there: the row's factors gathered by slot (<c>[R, ·, ·]</c>; Kronecker factors are a few
/// hundred numbers, so this copy is small) and two batched GEMMs, <c>A_t X_t B_tᵀ</c> per row; then one scale and one
/// add into the rows. The calls do not grow with the number of distinct adapters.
/// </summary>
internal sealed class KroneckerSlotStep : IDisposable
{
    /// <summary>Fewest groups for which the slot path is used: a group costs about four calls per term on its own path.</summary>
    internal const int MinGroups = 3;

    private readonly KroneckerSlotBank _bank;
    private readonly (AdapterTokenGroup Group, KroneckerModules Modules)[] _groups;
    private readonly SlotRows _layout;

    private KroneckerSlotStep(KroneckerSlotBank bank, List<(AdapterTokenGroup Group, KroneckerModules Modules)> groups)
    {
        _bank = bank;
        _groups = [.. groups];
        bank.GroupsServed += groups.Count;
        _layout = new SlotRows([.. groups.Select(g => g.Group)]);
    }

    /// <summary>The slot path for the short, slotted groups of <paramref name="groups"/> (null when too few qualify); <paramref name="rest"/> gets the others.</summary>
    public static KroneckerSlotStep? TryBuild(List<(AdapterTokenGroup Group, KroneckerModules Modules)> groups, out List<(AdapterTokenGroup Group, KroneckerModules Modules)> rest)
    {
        var placed = SlotGroups.Select(groups, MinGroups, KroneckerSlotBank.Of, (bank, adapter, modules) => bank.TryPlace(adapter, modules),
            null, out var stacks, out rest);
        return placed is null ? null : new KroneckerSlotStep(stacks!, placed);
    }

    /// <summary>Adds every slotted group's <c>scale · x ΔWᵀ</c> at (<paramref name="layer"/>, <paramref name="projection"/>) to its rows of <paramref name="y"/>.</summary>
    public void Apply(int layer, Projection projection, Tensor x, Tensor y)
    {
        var keys = new HashSet<KroneckerTermKey>();
        foreach (var (_, modules) in _groups)
            if (modules.Module(layer, projection) is { } module)
                foreach (var term in module.Terms) keys.Add(KroneckerTermKey.Of(module, term));
        if (keys.Count == 0) return;
        long r = _layout.Count, dOut = y.size(1);
        var xs = _layout.Gather(x);                                                                 // [R, d_in]
        var rowSlots = _layout.RowSlots();                                                          // [R]

        Tensor? delta = null;                                                                       // [R, d_out]
        foreach (var key in keys)
        {
            var stack = _bank.Stack(key) ?? throw new InvalidOperationException($"no slot stack for the Kronecker term {key}");
            var (ma, na, mb, nb, k) = (key.Shape.Ma, key.Shape.Na, key.Shape.Mb, key.Shape.Nb, key.Count);
            if (xs.dtype != stack.Left.dtype) xs = xs.to(stack.Left.dtype);
            var xt = xs.view(r, na, nb);                                                            // [R, Na, Nb]
            var left = stack.Left.index_select(0, rowSlots);                                        // [R, Ma·k, Na] or [R, Ma, k·Na]
            var right = stack.Right.index_select(0, rowSlots);                                      // [R, Mb, k·Nb] or [R, k·Mb, Nb]
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
        if (_layout.Scale is not null) delta = delta!.mul(_layout.Scale.view(r, 1));               // [R, d_out] · the row's scale (0 on padding)
        _layout.AddTo(y, delta!);
    }

    public void Dispose() => _layout.Dispose();
}
