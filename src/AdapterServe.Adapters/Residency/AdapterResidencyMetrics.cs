using Prometheus;

namespace AdapterServe.Adapters;

/// <summary>The residency cache's Prometheus collectors (default registry unless a factory is given, e.g. in tests).</summary>
public sealed class AdapterResidencyMetrics
{
    public AdapterResidencyMetrics(IMetricFactory? factory = null)
    {
        factory ??= Metrics.DefaultFactory;
        Loads = factory.CreateCounter("adapterserve_adapter_loads_total",
            "Adapter loads from storage into the host tier, by result (ok, error).", ["result"]);
        Evictions = factory.CreateCounter("adapterserve_adapter_evictions_total",
            "Adapter versions evicted from the device or host tier to make room.");
        LoadSeconds = factory.CreateHistogram("adapterserve_adapter_load_seconds",
            "Seconds to load one adapter version from storage into the host tier.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.001, 2, 17) });
        Resident = factory.CreateGauge("adapterserve_adapters_resident",
            "Adapter versions resident per tier (device, host).", ["tier"]);
        ResidentBytes = factory.CreateGauge("adapterserve_adapter_resident_bytes",
            "Bytes of adapter tensors resident per tier (device, host).", ["tier"]);
    }

    public Counter Loads { get; }
    public Counter Evictions { get; }
    public Histogram LoadSeconds { get; }
    public Gauge Resident { get; }
    public Gauge ResidentBytes { get; }
}
