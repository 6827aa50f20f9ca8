using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Experts;

/// <summary>
/// The device side of expert accounting for ONE forward step. A mixture's executor hands it, per routed site, the
/// step's selection as it is on the device (a top-K index tensor or a per-row count tensor); each call reduces it to
/// per-expert counts with one or two native calls and keeps that small tensor on the device — no host sync inside the
/// forward. <see cref="Flush"/> (the step hook's end-of-step call) concatenates every site's counts and copies them to
/// the host ONCE, then adds them to the <see cref="ExpertUsage"/>. Only the rows of the step count: prompt tokens and
/// fed-back generated tokens, exactly the tokens the forward runs. Engine thread only; dispose (or flush) every step.
/// </summary>
public sealed class ExpertStepTally : IDisposable
{
    private readonly ExpertUsage _usage;
    private readonly List<(ExpertSite Site, long RoutedTokens, Tensor Counts)> _pending = [];
    private readonly List<(ExpertSite Site, long RoutedTokens)> _dense = [];

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
    public int PendingSites => _pending.Count + _dense.Count;

    /// <summary>
    /// Records a top-K routing: <paramref name="indices"/> <c>[N, K]</c> (int64) holds the expert ids chosen for each of
    /// the N routed tokens. Counts each (token, expert) once.
    /// </summary>
    public void RecordTopK(ExpertSite site, Tensor indices)
    {
        ArgumentNullException.ThrowIfNull(site);
        ArgumentNullException.ThrowIfNull(indices);
        if (indices.dim() != 2) throw new ArgumentException($"top-K indices must be [N, K], got [{string.Join(", ", indices.shape)}]", nameof(indices));
        long n = indices.size(0);
        var counts = indices.size(1) == 0 ? zeros(site.Experts.Count, ScalarType.Int64, indices.device)
            : one_hot(indices, site.Experts.Count).sum([0, 1]);                 // [N, K, E] → [E] int64
        Keep(site, n, counts);
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
        var counts = selections.sum(0, type: ScalarType.Int64);                // [E] int64
        Keep(site, selections.size(0), counts);
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

    /// <summary>Copies every recorded count to the host in one transfer and adds them to the totals. Idempotent.</summary>
    public void Flush()
    {
        foreach (var (site, routed) in _dense)
            _usage.Add(site, routed, Enumerable.Repeat(routed, site.Experts.Count).ToArray());
        _dense.Clear();
        if (_pending.Count == 0) return;
        long[] host;
        using (var scope = NewDisposeScope())
        {
            var all = _pending.Count == 1 ? _pending[0].Counts : cat(_pending.Select(p => p.Counts).ToArray(), 0); // [Σ E]
            host = all.cpu().data<long>().ToArray();
        }
        var pending = _pending.ToArray();
        Discard();
        int offset = 0;
        foreach (var (site, routed, _) in pending)
        {
            _usage.Add(site, routed, host.AsSpan(offset, site.Experts.Count));
            offset += site.Experts.Count;
        }
    }

    /// <summary>Drops what was recorded without counting it (a failed step).</summary>
    public void Discard()
    {
        foreach (var p in _pending) p.Counts.Dispose();
        _pending.Clear();
        _dense.Clear();
    }

    public void Dispose() => Discard();

    private void Keep(ExpertSite site, long routedTokens, Tensor counts)
    {
        if (counts.dim() != 1 || counts.size(0) != site.Experts.Count)
            throw new InvalidOperationException($"expert counts of {site.Adapter} have shape [{string.Join(", ", counts.shape)}], expected [{site.Experts.Count}]");
        _pending.Add((site, routedTokens, counts.DetachFromDisposeScope()));
    }
}
