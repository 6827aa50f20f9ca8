using Prometheus;

namespace AdapterServe.Adapters.Experts;

/// <summary>
/// The expert accounting's Prometheus collectors, in <see cref="Registry"/> (the default registry unless one is given,
/// e.g. in tests). <see cref="ExpertUsage"/> publishes into them when the registry is collected.
/// </summary>
public sealed class ExpertUsageMetrics
{
    public ExpertUsageMetrics(CollectorRegistry? registry = null)
    {
        Registry = registry ?? Metrics.DefaultRegistry;
        var factory = Metrics.WithCustomRegistry(Registry);
        Selections = factory.CreateCounter("adapterserve_expert_selections_total",
            "(token, expert) selections of a mixture adapter's router, per adapter, layer, module and expert.",
            ["adapter", "layer", "module", "expert"]);
        RoutedTokens = factory.CreateCounter("adapterserve_expert_routed_tokens_total",
            "Token positions routed by a mixture adapter's router, per adapter, layer and module (utilisation = selections / routed tokens).",
            ["adapter", "layer", "module"]);
        LoadBalance = factory.CreateGauge("adapterserve_expert_load_balance",
            "Normalised entropy (0 = one expert takes every selection, 1 = perfectly even) of a mixture module's expert selection shares over the last Experts:LoadBalanceWindowSteps steps that routed tokens through it.",
            ["adapter", "layer", "module"]);
    }

    public CollectorRegistry Registry { get; }
    public Counter Selections { get; }
    public Counter RoutedTokens { get; }
    public Gauge LoadBalance { get; }
}
