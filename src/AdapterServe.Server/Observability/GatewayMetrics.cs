using System.Globalization;
using System.Text;
using AdapterServe.Adapters;
using AdapterServe.Engine;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Observability;

/// <summary>
/// The vLLM-named series the Kubernetes Gateway API Inference Extension's endpoint picker routes on, written after the
/// <c>adapterserve_*</c> series on <c>/metrics</c> (prometheus-net refuses the colon in their names, which Prometheus
/// allows): queue depth, running requests, KV-cache usage (also under its pre-v1 name) and <c>vllm:lora_requests_info</c>
/// for LoRA-affinity routing. Names, labels and values follow vLLM's: the gauges carry <c>model_name</c>; the LoRA info
/// gauge's value is the Unix time of its last update and its labels are <c>max_lora</c> (adapters resident on the device
/// at once) and the comma-separated adapter names in <c>running_lora_adapters</c> / <c>waiting_lora_adapters</c>. Like
/// vLLM, earlier label sets stay with their last time (the picker reads the newest); the last few are kept.
/// </summary>
public sealed class GatewayMetrics(IGenerationEngine engine, IOptions<ResidencyOptions> residency, TimeProvider? time = null)
{
    private const int LoraInfoHistory = 8;

    private readonly TimeProvider _time = time ?? TimeProvider.System;
    private readonly List<(string Running, string Waiting, double At)> _loraInfo = [];
    private readonly Lock _lock = new();

    /// <summary>The series in the Prometheus text format (0.0.4), as of the engine's last scheduling decision.</summary>
    public string Text()
    {
        var load = engine.Load;
        string model = Escape(engine.Model.Id);
        string maxLora = residency.Value.MaxDeviceAdapters.ToString(CultureInfo.InvariantCulture);
        double now = _time.GetUtcNow().ToUnixTimeMilliseconds() / 1000.0;
        var sb = new StringBuilder();
        void Gauge(string name, string help, double value)
        {
            sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            sb.Append("# TYPE ").Append(name).Append(" gauge\n");
            sb.Append(name).Append("{model_name=\"").Append(model).Append("\"} ").Append(Number(value)).Append('\n');
        }
        Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", load.Running);
        Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", load.Waiting);
        Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", load.KvCacheUsage);
        Gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (the pre-v1 name). 1 means 100 percent usage.", load.KvCacheUsage);

        string running = string.Join(',', load.RunningAdapters), waiting = string.Join(',', load.WaitingAdapters);
        sb.Append("# HELP vllm:lora_requests_info Running stats on lora requests.\n# TYPE vllm:lora_requests_info gauge\n");
        lock (_lock)
        {
            _loraInfo.RemoveAll(l => l.Running == running && l.Waiting == waiting);
            _loraInfo.Add((running, waiting, now));
            if (_loraInfo.Count > LoraInfoHistory) _loraInfo.RemoveAt(0);
            foreach (var (r, w, at) in _loraInfo)
                sb.Append("vllm:lora_requests_info{max_lora=\"").Append(maxLora)
                  .Append("\",running_lora_adapters=\"").Append(Escape(r))
                  .Append("\",waiting_lora_adapters=\"").Append(Escape(w)).Append("\"} ").Append(Number(at)).Append('\n');
        }
        return sb.ToString();
    }

    private static string Number(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    private static string Escape(string value) => value.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");
}
