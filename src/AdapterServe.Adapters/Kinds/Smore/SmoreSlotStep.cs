using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// The slot path of the S'MoRE kind for one step: several short S'MoRE groups (one adapter with one scale each) served
/// from the <see cref="SmoreSlotBank"/> stacks. Per projection and structure class present there (the groups whose
/// module has one <see cref="SmoreSignature"/>), ONE run of the fused tree over all of them, whatever their number:
/// their rows laid out <c>[S groups, L = longest group]</c> (<see cref="SlotRows"/>; padding rows weigh 0), the trees'
/// tensors picked from the stack by slot (<c>[S, ...]</c>), then <see cref="SmoreTree.Project"/> (one batched GEMM),
/// <see cref="SmoreTree.Apply"/> (routing and experts), the rows' scales and one add into the rows. The
/// selections of all the class's groups are recorded once per projection (<see cref="ExpertStepTally.RecordSlots"/>).
/// Owns the step's small index tensors.
/// </summary>
internal sealed class SmoreSlotStep : IMixtureSlotStep
{
    /// <summary>
    /// Fewest groups of one structure for which the slot path is used: one S'MoRE tree costs ~50 calls per projection,
    /// a class from the stacks about as many plus one read of each stacked tensor, so two groups already gain.
    /// </summary>
    internal const int MinGroups = 2;

    private readonly SmoreSlotBank _bank;
    private readonly ExpertStepTally _tally;
    private readonly (AdapterTokenGroup Group, SmoreWeights Weights)[] _groups;
    private readonly Dictionary<string, ClassRows> _classes = [];   // by the class's groups (indices into _groups)

    /// <summary>The row layout of one structure class's groups and its selection mask, shared by every projection where the class is the same groups.</summary>
    private sealed class ClassRows(int[] members, SlotRows layout, Tensor valid) : IDisposable
    {
        /// <summary>Indices into the step's groups, in layout order of <see cref="SlotRows.Order"/>'s indices.</summary>
        public int[] Members { get; } = members;
        public SlotRows Layout { get; } = layout;
        /// <summary><c>[S, L, Σ P_l]</c> int64 0/1: a real row's selections count; the tally takes it over at the first record.</summary>
        public Tensor Valid { get; } = valid;
        public bool HandedOver { get; set; }

        public void Dispose()
        {
            Layout.Dispose();
            if (!HandedOver) Valid.Dispose();
        }
    }

    private SmoreSlotStep(SmoreSlotBank bank, ExpertStepTally tally, List<(AdapterTokenGroup Group, SmoreWeights Weights)> groups)
    {
        _bank = bank;
        _tally = tally;
        _groups = [.. groups];
        bank.GroupsServed += groups.Count;
    }

    /// <summary>
    /// The slot path for the short, slotted S'MoRE groups of <paramref name="groups"/> whose structure at least
    /// <see cref="MinGroups"/> of them share (null when fewer qualify); <paramref name="rest"/> gets the groups it does
    /// not serve. A structure of one group stays on that group's own path: from the stacks it would cost as much, plus the reads.
    /// </summary>
    public static SmoreSlotStep? TryBuild(List<(AdapterTokenGroup Group, SmoreWeights Weights)> groups, ExpertStepTally tally,
        out List<(AdapterTokenGroup Group, SmoreWeights Weights)> rest)
    {
        var placed = SlotGroups.Select(groups, MinGroups, SmoreSlotBank.Of, (bank, adapter, weights) => bank.TryPlace(adapter, weights),
            SlotGroups.SharingAClass(groups, MinGroups, weights => weights.Signatures), out var stacks, out rest);
        return placed is null ? null : new SmoreSlotStep(stacks!, tally, placed);
    }

    /// <summary>Adds every slotted group's <c>scale · S'MoRE delta</c> at (<paramref name="layer"/>, <paramref name="projection"/>) to its rows of <paramref name="y"/>.</summary>
    public void Apply(int layer, Projection projection, Tensor x, Tensor y)
    {
        var classes = new Dictionary<SmoreSignature, List<int>>();
        for (int i = 0; i < _groups.Length; i++)
            if (_groups[i].Weights.Module(layer, projection) is { } module)
            {
                if (!classes.TryGetValue(module.Signature, out var members)) classes[module.Signature] = members = [];
                members.Add(i);
            }

        foreach (var (signature, members) in classes)
        {
            var stack = _bank.Stack(new SmoreStackKey(layer, projection, signature))
                ?? throw new InvalidOperationException($"no S'MoRE slot stack for {projection.ShortName()} of layer {layer} with {signature}");
            AdapterTokenGroup.EnsureFits("the S'MoRE slots", layer, projection, signature.OutFeatures, signature.InFeatures, x, y);
            var rows = Rows(members, signature);
            var layout = rows.Layout;
            int s = layout.Groups, length = layout.Length;

            var xs = layout.Gather(x);                                                              // [S·L, d_in]
            if (xs.dtype != ScalarType.Float32) xs = xs.to(ScalarType.Float32);
            var tree = stack.Select(layout);                                                        // [S, ...] per tree
            var projected = SmoreTree.Project(tree, xs.view(s, length, signature.InFeatures));      // [S, L, d_down + Σ s·r]
            var (delta, routing) = SmoreTree.Apply(tree, projected);                                // [S, L, d_out], [S, L, P_l]
            if (layout.Scale is not null) delta = delta.mul_(layout.Scale);                         // · the row's scale (0 on padding rows)
            layout.AddTo(y, delta.view(layout.Count, signature.OutFeatures));

            var sites = new ExpertSite?[s];                                                         // an empty position: null, nothing counted
            for (int p = 0; p < s; p++)
                if (layout.Order[p] >= 0) sites[p] = _groups[rows.Members[layout.Order[p]]].Weights.Site(layer, projection);
            _tally.RecordSlots(sites, layout.Routed, SmoreTree.Labelled(tree, routing), rows.Valid, signature.Experts); // ids [S, L, Σ P_l]
            rows.HandedOver = true;
        }
    }

    /// <summary>The layout of one class's groups (made the first time that set of groups is a class in this step).</summary>
    private ClassRows Rows(List<int> members, SmoreSignature signature)
    {
        string key = string.Join(",", members);
        if (_classes.TryGetValue(key, out var known)) return known;

        var layout = new SlotRows([.. members.Select(i => _groups[i].Group)], slotRange: true);
        return _classes[key] = new ClassRows([.. members], layout, layout.SelectionMask(signature.Selections));
    }

    public void Dispose()
    {
        foreach (var c in _classes.Values) c.Dispose();
        _classes.Clear();
    }
}
