using Prometheus;

namespace AdapterServe.Adapters.Experts;

/// <summary>The expert accounting's Prometheus collectors (default registry unless a factory is given, e.g. in tests).</summary>
public sealed class ExpertUsageMetrics
{
    public ExpertUsageMetrics(IMetricFactory? factory = null)
    {
        factory ??= Metrics.DefaultFactory;
        Selections = factory.CreateCounter("adapterserve_expert_selections_total",
            "(token, expert) selections of a mixture adapter's router, per adapter, layer, module and expert.",
            ["adapter", "layer", "module", "expert"]);
        RoutedTokens = factory.CreateCounter("adapterserve_expert_routed_tokens_total",
            "Token positions routed by a mixture adapter's router, per adapter, layer and module (utilisation = selections / routed tokens).",
            ["adapter", "layer", "module"]);
    }

    public Counter Selections { get; }
    public Counter RoutedTokens { get; }
}
