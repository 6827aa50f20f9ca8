using System.Runtime.CompilerServices;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Experts;

/// <summary>
/// The device side of expert accounting for ONE forward step. A mixture's executor hands it, per routed site, the
/// step's selection as it is on the device (a top-K index tensor or a per-row count tensor); the tally only keeps a
/// reference (no native call, no host sync inside the forward). <see cref="Flush"/> (the step hook's end-of-step call)
/// reduces the selections of all sites of the same shape together (stack → one-hot → sum: three calls for, say, the
/// 210 sites of one mixer group, instead of two per site), copies every count to the host ONCE, then adds them to the
/// <see cref="ExpertUsage"/>. Only the rows of the step count: prompt tokens and
/// fed-back generated tokens, exactly the tokens the forward runs. Engine thread only; dispose (or flush) every step.
/// </summary>
public sealed class ExpertStepTally : IDisposable
{
    private readonly ExpertUsage _usage;
    private readonly List<Pending> _pending = [];

    /// <summary>One site's selection of the step: top-K ids <c>[N, K]</c> int64, or per-token counts <c>[N, E]</c>.</summary>
    private sealed record Pending(ExpertSite Site, long RoutedTokens, Tensor Selection, bool IsTopK)
    {
        public (bool, int, long, long, ScalarType) Shape => (IsTopK, Site.Experts.Count, Selection.size(0), Selection.size(1), Selection.dtype);
    }
    private readonly List<(ExpertSite Site, long RoutedTokens)> _dense = [];
    private readonly List<SlotPending> _slots = [];
    private readonly HashSet<Tensor> _masks = new(ReferenceEqualityComparer.Instance);

    /// <summary>One projection of a stacked step (<see cref="RecordSlots"/>): ids <c>[S, L, K]</c>, the shared 0/1 mask of the same shape.</summary>
    private sealed record SlotPending(IReadOnlyList<ExpertSite?> Sites, IReadOnlyList<long> RoutedTokens, Tensor Ids, Tensor Valid, int Experts)
    {
        public (long, long, long, int, Tensor) Shape => (Ids.size(0), Ids.size(1), Ids.size(2), Experts, Valid);
    }

    private int _holders;

    internal ExpertStepTally(ExpertUsage usage) => _usage = usage;

    internal ExpertUsage Usage => _usage;

    /// <summary>True while executors of a step hold it (<see cref="ExpertUsage.JoinStep"/>).</summary>
    internal bool Open => _holders > 0;

    internal void Join() => _holders++;

    private bool _abandoned;

    /// <summary>One holder of the step is done (its executor completed); the last one flushes the step's counts in one copy (or drops them if a holder abandoned the step).</summary>
    public void Leave()
    {
        if (_holders <= 0) return;
        if (--_holders > 0) return;
        if (_abandoned) Discard(); else Flush();
        _abandoned = false;
    }

    /// <summary>One holder leaves a step whose forward threw: nothing recorded in this step is counted, and no host copy is made.</summary>
    public void Abandon()
    {
        if (_holders <= 0) { Discard(); return; }
        _abandoned = true;
        Leave();
    }

    /// <summary>Sites recorded since the last flush.</summary>
    public int PendingSites => _pending.Count + _dense.Count + _slots.Sum(p => p.Sites.Count(site => site is not null));

    /// <summary>
    /// Records a top-K routing: <paramref name="indices"/> <c>[N, K]</c> (int64) holds the expert ids chosen for each of
    /// the N routed tokens. Counts each (token, expert) once.
    /// </summary>
    public void RecordTopK(ExpertSite site, Tensor indices)
    {
        ArgumentNullException.ThrowIfNull(site);
        ArgumentNullException.ThrowIfNull(indices);
        if (indices.dim() != 2) throw new ArgumentException($"top-K indices must be [N, K], got [{string.Join(", ", indices.shape)}]", nameof(indices));
        _pending.Add(new Pending(site, indices.size(0), indices.DetachFromDisposeScope(), IsTopK: true));
    }

    /// <summary>
    /// Records a routing given per token: <paramref name="selections"/> <c>[N, E]</c> holds, for each routed token, how
    /// often each expert was selected (0/1 for a plain top-K or a dense gate; more where a tree reaches one expert
    /// through several paths). Any dtype; values are truncated to integers.
    /// </summary>
    public void RecordSelections(ExpertSite site, Tensor selections)
    {
        ArgumentNullException.ThrowIfNull(site);
        ArgumentNullException.ThrowIfNull(selections);
        if (selections.dim() != 2 || selections.size(1) != site.Experts.Count)
            throw new ArgumentException($"selections must be [N, {site.Experts.Count}], got [{string.Join(", ", selections.shape)}]", nameof(selections));
        _pending.Add(new Pending(site, selections.size(0), selections.DetachFromDisposeScope(), IsTopK: false));
    }

    /// <summary>
    /// Records a dense routing: each of the <paramref name="routedTokens"/> tokens used every expert of the site
    /// (OMoE without top_k, a dense gate). Known on the host: no device work.
    /// </summary>
    public void RecordAll(ExpertSite site, long routedTokens)
    {
        ArgumentNullException.ThrowIfNull(site);
        ArgumentOutOfRangeException.ThrowIfNegative(routedTokens);
        _dense.Add((site, routedTokens));
    }

    /// <summary>
    /// Records one projection of a step whose groups are stacked (the slot path): <paramref name="ids"/> <c>[S, L, K]</c>
    /// (int64, in <c>[0, experts)</c>) holds group s's chosen experts for each of its rows, and <paramref name="valid"/>
    /// (same shape, 0/1) which entries count (a group's real rows and its own K). Group s counts for
    /// <paramref name="sites"/>[s] (null: the group's adapter does not route this projection) with
    /// <paramref name="routedTokens"/>[s] tokens. The tally takes over <paramref name="valid"/> (one mask may serve many
    /// projections; it is disposed once, after the flush).
    /// </summary>
    public void RecordSlots(IReadOnlyList<ExpertSite?> sites, IReadOnlyList<long> routedTokens, Tensor ids, Tensor valid, int experts)
    {
        ArgumentNullException.ThrowIfNull(sites);
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentNullException.ThrowIfNull(valid);
        if (ids.dim() != 3 || ids.size(0) != sites.Count || routedTokens.Count != sites.Count)
            throw new ArgumentException($"stacked ids must be [{sites.Count}, L, K] with a routed-token count per group, got [{string.Join(", ", ids.shape)}]", nameof(ids));
        _masks.Add(valid);
        _slots.Add(new SlotPending(sites, routedTokens, ids.DetachFromDisposeScope(), valid, experts));
    }

    /// <summary>Copies every recorded count to the host in one transfer and adds them to the totals. Idempotent.</summary>
    public void Flush()
    {
        foreach (var (site, routed) in _dense)
            _usage.Add(site, routed, Enumerable.Repeat(routed, site.Experts.Count).ToArray());
        _dense.Clear();
        if (_pending.Count == 0 && _slots.Count == 0) return;
        var order = new List<(ExpertSite? Site, long RoutedTokens, int Width)>();       // in the order of the host copy
        long[] host;
        using (var scope = NewDisposeScope())
        {
            var counts = new List<Tensor>();
            foreach (var same in _pending.GroupBy(p => p.Shape))
            {
                var group = same.ToList();
                order.AddRange(group.Select(p => ((ExpertSite?)p.Site, p.RoutedTokens, p.Site.Experts.Count)));
                var (isTopK, experts, tokens, k, _) = group[0].Shape;
                var stacked = group.Count == 1 ? group[0].Selection.unsqueeze(0) : stack(group.Select(p => p.Selection).ToArray()); // [S, N, K] or [S, N, E]
                counts.Add(!isTopK ? stacked.sum(1, type: ScalarType.Int64)                                             // [S, E]
                    : tokens * k == 0 ? zeros([group.Count, experts], ScalarType.Int64, stacked.device)
                    : one_hot(stacked, experts).sum([1, 2]));                                                             // [S, N, K, E] → [S, E]
            }
            foreach (var same in _slots.GroupBy(p => p.Shape, ShapeComparer.Instance))
            {
                var group = same.ToList();
                foreach (var p in group)
                    for (int g = 0; g < p.Sites.Count; g++) order.Add((p.Sites[g], p.RoutedTokens[g], p.Experts));
                var stacked = group.Count == 1 ? group[0].Ids.unsqueeze(0) : stack(group.Select(p => p.Ids).ToArray());   // [P, S, L, K]
                counts.Add(one_hot(stacked, group[0].Experts).mul(group[0].Valid.unsqueeze(-1)).sum([2, 3]));            // [P, S, L, K, E] → [P, S, E]
            }
            var all = counts.Count == 1 ? counts[0].flatten() : cat(counts.Select(c => c.flatten()).ToArray(), 0); // [Σ E]
            host = all.cpu().data<long>().ToArray();
        }
        Discard();
        int offset = 0;
        foreach (var (site, routed, width) in order)
        {
            if (site is not null) _usage.Add(site, routed, host.AsSpan(offset, site.Experts.Count));
            offset += width;
        }
    }

    /// <summary>Groups stacked records by shape and by the very mask tensor they share.</summary>
    private sealed class ShapeComparer : IEqualityComparer<(long, long, long, int, Tensor)>
    {
        public static ShapeComparer Instance { get; } = new();
        public bool Equals((long, long, long, int, Tensor) a, (long, long, long, int, Tensor) b) =>
            a.Item1 == b.Item1 && a.Item2 == b.Item2 && a.Item3 == b.Item3 && a.Item4 == b.Item4 && ReferenceEquals(a.Item5, b.Item5);
        public int GetHashCode((long, long, long, int, Tensor) k) => HashCode.Combine(k.Item1, k.Item2, k.Item3, k.Item4, RuntimeHelpers.GetHashCode(k.Item5));
    }

    /// <summary>Drops what was recorded without counting it (a failed step).</summary>
    public void Discard()
    {
        foreach (var p in _pending) p.Selection.Dispose();
        foreach (var p in _slots) p.Ids.Dispose();
        foreach (var m in _masks) m.Dispose();
        _pending.Clear();
        _dense.Clear();
        _slots.Clear();
        _masks.Clear();
    }

    public void Dispose() => Discard();
}
