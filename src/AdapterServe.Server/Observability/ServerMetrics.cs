using Prometheus;

namespace AdapterServe.Server.Observability;

/// <summary>Metrics the HTTP layer records (the token-level ones are the engine's).</summary>
internal static class ServerMetrics
{
    /// <summary>Label for a <c>model</c> that was never accepted (unknown names must not create label values).</summary>
    public const string UnknownModel = "unknown";

    public static readonly Counter Requests = Metrics.CreateCounter(
        "adapterserve_requests_total", "Generation requests (completions and chat) by model and HTTP status (499: the client went away).",
        "model", "status");

    /// <summary>Drops prometheus-net's default .NET meter and event-counter exports (~30 msquic/runtime series of noise); keeps the process metrics.</summary>
    public static void SuppressDefaultNoise() => Metrics.SuppressDefaultMetrics(new SuppressDefaultMetricOptions
    {
        SuppressProcessMetrics = false,
        SuppressDebugMetrics = true,
        SuppressEventCounters = true,
        SuppressMeters = true,
    });
}
