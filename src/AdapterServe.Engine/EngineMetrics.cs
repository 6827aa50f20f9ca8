using Prometheus;

namespace AdapterServe.Engine;

/// <summary>Token-level metrics, recorded on the engine thread where the events happen. Bucket boundaries follow vLLM's.</summary>
internal static class EngineMetrics
{
    public static readonly Gauge RequestsRunning = Metrics.CreateGauge("adapterserve_num_requests_running", "Sequences in the running batch.");
    public static readonly Gauge RequestsWaiting = Metrics.CreateGauge("adapterserve_num_requests_waiting", "Requests waiting for a place in the batch.");
    public static readonly Gauge KvCacheUsage = Metrics.CreateGauge("adapterserve_kv_cache_usage_ratio", "Share of KV-cache slots in use (0..1).");

    public static readonly Gauge LiveTensors = Metrics.CreateGauge("adapterserve_engine_live_tensors", "Live TorchSharp tensors owned by the engine thread after the last step (must stay flat).");

    public static readonly Counter StepFailures = Metrics.CreateCounter("adapterserve_engine_step_failures_total",
        "Forward steps that threw, by how they ended: retried_ok (the retry ran, or every part of the split step did), isolated (only the sequences that make it throw failed), failed (no sequence of the step could go on).",
        "outcome");
    // Created with the collector, so every outcome is exported at 0 from the engine's first step on (a dashboard panel or
    // an alert on them has data before any step fails), not only once the failure path first runs.
    public static readonly Counter.Child StepsRetriedOk = StepFailures.WithLabels("retried_ok");
    public static readonly Counter.Child StepsIsolated = StepFailures.WithLabels("isolated");
    public static readonly Counter.Child StepsFailed = StepFailures.WithLabels("failed");

    public static readonly Counter PromptTokens = Metrics.CreateCounter("adapterserve_prompt_tokens_total", "Prompt tokens prefilled.", "model");
    public static readonly Counter GenerationTokens = Metrics.CreateCounter("adapterserve_generation_tokens_total", "Tokens generated.", "model");
    public static readonly Counter RequestsFinished = Metrics.CreateCounter("adapterserve_request_success_total", "Finished sequences by finish reason.", "model", "finished_reason");

    public static readonly Histogram TimeToFirstToken = Metrics.CreateHistogram("adapterserve_time_to_first_token_seconds", "Time from arrival to the first generated token.",
        new HistogramConfiguration { LabelNames = ["model"], Buckets = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0] });
    public static readonly Histogram TimePerOutputToken = Metrics.CreateHistogram("adapterserve_time_per_output_token_seconds", "Time between consecutive generated tokens of a sequence.",
        new HistogramConfiguration { LabelNames = ["model"], Buckets = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0] });
    public static readonly Histogram E2eLatency = Metrics.CreateHistogram("adapterserve_e2e_request_latency_seconds", "Time from arrival to the end of a sequence.",
        new HistogramConfiguration { LabelNames = ["model"], Buckets = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0] });
    public static readonly Histogram BatchSize = Metrics.CreateHistogram("adapterserve_batch_size", "Sequences in one forward step.",
        new HistogramConfiguration { Buckets = [1, 2, 4, 8, 16, 32, 64, 128, 256] });
    public static readonly Histogram StepTokens = Metrics.CreateHistogram("adapterserve_step_tokens", "Tokens (prefill + decode) in one forward step.",
        new HistogramConfiguration { Buckets = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192] });
    /// <summary>Engine-thread seconds by phase of the step loop (see <see cref="EngineStepPhases"/>).</summary>
    public static readonly Counter StepPhaseSeconds = Metrics.CreateCounter("adapterserve_engine_step_phase_seconds_total",
        "Engine-thread time by phase of the step loop: schedule (admit, reap, schedule, plan), hook (building the adapters' step), forward (the model forward with the adapter hooks), adapters_complete (the adapters' end of step: expert counts to the host), logits (log-softmax where asked, copy to the host), sample (sampling, detokenising, events), release (freeing the step's tensors).",
        "phase");
    public static readonly Histogram StepSeconds = Metrics.CreateHistogram("adapterserve_step_seconds", "Duration of one forward step including sampling.",
        new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0005, 2, 16) });
}
