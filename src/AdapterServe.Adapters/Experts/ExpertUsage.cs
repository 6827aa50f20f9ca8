using AdapterServe.Modeling;
using Prometheus;

namespace AdapterServe.Adapters.Experts;

/// <summary>One expert's count at one routed site.</summary>
/// <param name="Selections">(token, expert) selections of this expert.</param>
/// <param name="Share">Selections / all selections of the site (the shares of a site sum to 1).</param>
/// <param name="Utilisation">Selections / routed tokens (1 = chosen for every token).</param>
public sealed record ExpertCount(string Expert, long Selections, double Share, double Utilisation);

/// <summary>The counts of one (layer, module) of a mixture adapter.</summary>
/// <param name="LoadBalance">Normalised entropy of the shares since start, 0 (one expert takes everything) … 1 (perfectly even); null before any selection.</param>
/// <param name="WindowLoadBalance">The same over the sliding window of <see cref="ExpertUsage.LoadBalanceWindowSteps"/> (the gauge's value).</param>
public sealed record ExpertModuleUsage(int Layer, string Module, long RoutedTokens, long Selections, double? LoadBalance, double? WindowLoadBalance, IReadOnlyList<ExpertCount> Experts);

/// <summary>Everything counted for one mixture adapter (all versions of the name), modules in (layer, projection) order.</summary>
public sealed record ExpertAdapterUsage(string Adapter, IReadOnlyList<ExpertModuleUsage> Modules);

/// <summary>
/// The host side of expert accounting: totals per (adapter, layer, module, expert) since start, kept in memory for
/// <c>GET /v1/adapters/{name}/experts</c> and mirrored into Prometheus counters
/// (<c>adapterserve_expert_selections_total</c>, <c>adapterserve_expert_routed_tokens_total</c>) and the load-balance
/// gauge. One per process. The engine thread adds a step's counts once per step through an
/// <see cref="ExpertStepTally"/>; any thread may read. The collectors are brought up to date under the same lock just
/// before their registry is collected (<see cref="Publish"/>), so a scrape sees every counter at one step boundary: a
/// scrape in the middle of a step's update would read a module's selections and routed tokens from different steps,
/// and a utilisation over a range starting at such a sample could exceed 1.
/// </summary>
public sealed class ExpertUsage
{
    private readonly Lock _lock = new();
    private readonly Dictionary<(string Adapter, int Layer, Projection Projection), SiteTotals> _sites = [];

    public ExpertUsage(ExpertUsageMetrics? metrics = null)
    {
        Metrics = metrics ?? new ExpertUsageMetrics();
        Metrics.Registry.AddBeforeCollectCallback(Publish);
    }

    /// <summary>Default of <see cref="LoadBalanceWindowSteps"/>.</summary>
    public const int DefaultLoadBalanceWindowSteps = 64;

    private int _window = DefaultLoadBalanceWindowSteps;

    /// <summary>
    /// The sliding window of <c>adapterserve_expert_load_balance</c>: the last this-many steps that routed tokens through
    /// a module (steps where the module saw no token do not count). Set it at start (Experts:LoadBalanceWindowSteps);
    /// a change applies to windows from then on.
    /// </summary>
    public int LoadBalanceWindowSteps
    {
        get => Volatile.Read(ref _window);
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            Volatile.Write(ref _window, value);
        }
    }

    /// <summary>
    /// The process's accounting (Prometheus default registry), which the mixture kinds' step executors report into:
    /// kind handlers are shared singletons, like the Prometheus registry they feed.
    /// </summary>
    public static ExpertUsage Shared => SharedInstance.Value;

    private static readonly Lazy<ExpertUsage> SharedInstance = new(() => new ExpertUsage());

    public ExpertUsageMetrics Metrics { get; }

    /// <summary>A fresh per-step tally that reports into this accounting when flushed.</summary>
    public ExpertStepTally BeginStep() => new(this);

    [ThreadStatic] private static ExpertStepTally? t_openStep;

    /// <summary>
    /// The tally of the step being built on this thread (the engine thread), shared by every mixture kind of the step
    /// so the whole step's counts reach the host in ONE copy. Each caller calls <see cref="ExpertStepTally.Leave"/>
    /// once when its step is over; the last one flushes.
    /// </summary>
    public ExpertStepTally JoinStep()
    {
        var open = t_openStep;
        if (open is null || !open.Open || !ReferenceEquals(open.Usage, this)) t_openStep = open = new ExpertStepTally(this);
        open.Join();
        return open;
    }

    /// <summary>Adds one step's counts of one site: <paramref name="selections"/>[i] belongs to <c>site.Experts[i]</c>.</summary>
    public void Add(ExpertSite site, long routedTokens, ReadOnlySpan<long> selections)
    {
        ArgumentNullException.ThrowIfNull(site);
        if (selections.Length != site.Experts.Count)
            throw new ArgumentException($"{selections.Length} counts for {site.Experts.Count} experts of {site.Adapter} layer {site.Layer} {site.Module}", nameof(selections));
        ArgumentOutOfRangeException.ThrowIfNegative(routedTokens);
        lock (_lock)
        {
            var key = (site.Adapter, site.Layer, site.Projection);
            if (!_sites.TryGetValue(key, out var totals)) _sites[key] = totals = new SiteTotals();
            for (int i = 0; i < selections.Length; i++)
                if (selections[i] < 0) throw new ArgumentException($"negative count {selections[i]} for expert {site.Experts[i]}", nameof(selections));
            totals.RoutedTokens += routedTokens;
            totals.PendingRoutedTokens += routedTokens;
            totals.Window.Push(selections, LoadBalanceWindowSteps);
            for (int i = 0; i < selections.Length; i++)
            {
                string expert = site.Experts[i];
                if (!totals.Selections.TryGetValue(expert, out long before)) totals.Order.Add(expert);
                totals.Selections[expert] = before + selections[i];
                totals.PendingSelections[expert] = totals.PendingSelections.GetValueOrDefault(expert) + selections[i];
            }
        }
    }

    /// <summary>
    /// Brings the Prometheus collectors up to date with every count added so far (the counters by what was added since
    /// the last call, the gauge to the window's value). Runs before each collection of the registry; tests may call it.
    /// </summary>
    public void Publish()
    {
        lock (_lock)
            foreach (var ((adapter, layer, projection), totals) in _sites)
                Publish(adapter, layer, projection, totals);
    }

    /// <summary>Under the lock: one site's pending counts into the collectors.</summary>
    private void Publish(string adapter, int layer, Projection projection, SiteTotals totals)
    {
        if (totals.PendingSelections.Count == 0) return;
        string layerLabel = layer.ToString(System.Globalization.CultureInfo.InvariantCulture), module = projection.ShortName();
        Metrics.RoutedTokens.WithLabels(adapter, layerLabel, module).Inc(totals.PendingRoutedTokens);
        foreach (var (expert, n) in totals.PendingSelections)
        {
            var series = Metrics.Selections.WithLabels(adapter, layerLabel, module, expert);
            if (n > 0) series.Inc(n);
            else series.Publish();                                                          // an expert never chosen still has its series
        }
        if (totals.Window.LoadBalance() is { } balance) Metrics.LoadBalance.WithLabels(adapter, layerLabel, module).Set(balance);
        totals.PendingRoutedTokens = 0;
        totals.PendingSelections.Clear();
    }

    /// <summary>The counts of <paramref name="adapter"/>, or null when nothing was routed through it since start (or since <see cref="Forget"/>).</summary>
    public ExpertAdapterUsage? Snapshot(string adapter)
    {
        lock (_lock)
        {
            var modules = _sites.Where(s => s.Key.Adapter == adapter)
                .OrderBy(s => s.Key.Layer).ThenBy(s => s.Key.Projection)
                .Select(s => s.Value.Describe(s.Key.Layer, s.Key.Projection.ShortName()))
                .ToList();
            return modules.Count == 0 ? null : new ExpertAdapterUsage(adapter, modules);
        }
    }

    /// <summary>Names of the adapters with counts.</summary>
    public IReadOnlyList<string> Adapters
    {
        get { lock (_lock) return _sites.Keys.Select(k => k.Adapter).Distinct().Order(StringComparer.Ordinal).ToList(); }
    }

    /// <summary>Drops the in-memory counts of <paramref name="adapter"/> (after a delete); Prometheus counters stay monotonic.</summary>
    public void Forget(string adapter)
    {
        lock (_lock)
            foreach (var key in _sites.Keys.Where(k => k.Adapter == adapter).ToList())
            {
                Publish(key.Adapter, key.Layer, key.Projection, _sites[key]);                 // its counters keep what was counted
                _sites.Remove(key);
                Metrics.LoadBalance.RemoveLabelled(adapter, key.Layer.ToString(System.Globalization.CultureInfo.InvariantCulture), key.Projection.ShortName());
            }
    }

    /// <summary>Normalised entropy <c>−Σ pᵢ ln pᵢ / ln E</c> of the shares pᵢ over E experts; 1 for a single expert; null when nothing was selected.</summary>
    public static double? LoadBalance(IReadOnlyList<long> selections)
    {
        long total = selections.Sum();
        if (total == 0) return null;
        if (selections.Count == 1) return 1.0;
        double entropy = 0;
        foreach (long n in selections)
        {
            if (n == 0) continue;
            double p = (double)n / total;
            entropy -= p * Math.Log(p);
        }
        return entropy / Math.Log(selections.Count);
    }

    /// <summary>The load balance of <paramref name="adapter"/>'s module over the sliding window (the gauge's value), or null.</summary>
    public double? WindowLoadBalance(string adapter, int layer, Projection projection)
    {
        lock (_lock) return _sites.TryGetValue((adapter, layer, projection), out var totals) ? totals.Window.LoadBalance() : null;
    }

    /// <summary>The selections of the last <c>capacity</c> steps of one site, per expert index, with their running sum.</summary>
    private sealed class SelectionWindow
    {
        private readonly Queue<long[]> _steps = new();
        private long[] _sum = [];

        public void Push(ReadOnlySpan<long> selections, int capacity)
        {
            if (_sum.Length != selections.Length) { _steps.Clear(); _sum = new long[selections.Length]; }
            _steps.Enqueue(selections.ToArray());
            for (int i = 0; i < selections.Length; i++) _sum[i] += selections[i];
            while (_steps.Count > capacity)
            {
                var old = _steps.Dequeue();
                for (int i = 0; i < old.Length; i++) _sum[i] -= old[i];
            }
        }

        public double? LoadBalance() => ExpertUsage.LoadBalance(_sum);
    }

    private sealed class SiteTotals
    {
        public readonly SelectionWindow Window = new();
        public long RoutedTokens;
        /// <summary>Routed tokens and selections per expert added since the last <see cref="Publish"/>.</summary>
        public long PendingRoutedTokens;
        public readonly Dictionary<string, long> PendingSelections = new(StringComparer.Ordinal);
        public readonly List<string> Order = [];
        public readonly Dictionary<string, long> Selections = new(StringComparer.Ordinal);

        public ExpertModuleUsage Describe(int layer, string module)
        {
            var counts = Order.Select(e => Selections[e]).ToList();
            long total = counts.Sum();
            var experts = Order.Select(e => new ExpertCount(e, Selections[e],
                total == 0 ? 0 : (double)Selections[e] / total,
                RoutedTokens == 0 ? 0 : (double)Selections[e] / RoutedTokens)).ToList();
            return new ExpertModuleUsage(layer, module, RoutedTokens, total, LoadBalance(counts), Window.LoadBalance(), experts);
        }
    }
}
