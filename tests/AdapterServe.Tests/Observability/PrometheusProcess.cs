using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace AdapterServe.Tests.Observability;

/// <summary>
/// The real <c>prometheus</c> binary (Debian's package; <c>.ci/run</c> installs it) on a loopback port, with a generated
/// config that scrapes one target every second and its storage in a temporary folder; killed and removed on dispose.
/// </summary>
public sealed class PrometheusProcess : IAsyncDisposable
{
    public const string Binary = "/usr/bin/prometheus";
    public const string Job = "adapterserve";

    private readonly Process _process;
    private readonly string _root;
    private readonly StringBuilder _log = new();

    private PrometheusProcess(Process process, string root, Uri address)
    {
        _process = process;
        _root = root;
        Client = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(30) };
    }

    public HttpClient Client { get; }

    /// <summary>What Prometheus wrote (warnings and errors), for failure messages.</summary>
    public string Log { get { lock (_log) return _log.ToString(); } }

    public static bool Installed => File.Exists(Binary);

    /// <summary>Starts Prometheus scraping <c>http://{target}/metrics</c> every second; returns once it answers /-/ready.</summary>
    public static async Task<PrometheusProcess> StartAsync(string target, CancellationToken cancel)
    {
        string root = Path.Combine(Path.GetTempPath(), "adapterserve-tests", "prometheus", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(root);
        string config = Path.Combine(root, "prometheus.yml");
        await File.WriteAllTextAsync(config, $"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: {Job}
                metrics_path: /metrics
                static_configs:
                  - targets: ["{target}"]
            """, cancel);
        int port = FreeLoopbackPort();
        var start = new ProcessStartInfo(Binary,
        [
            $"--config.file={config}", $"--storage.tsdb.path={Path.Combine(root, "data")}",
            $"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        ])
        { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {Binary}");
        var prometheus = new PrometheusProcess(process, root, new Uri($"http://127.0.0.1:{port}"));
        process.OutputDataReceived += (_, e) => prometheus.Append(e.Data);
        process.ErrorDataReceived += (_, e) => prometheus.Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();

        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            if (process.HasExited) throw new InvalidOperationException($"prometheus exited with {process.ExitCode}:\n{prometheus.Log}");
            try
            {
                using var ready = await prometheus.Client.GetAsync("/-/ready", cancel);
                if (ready.IsSuccessStatusCode) return prometheus;
            }
            catch (HttpRequestException) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"prometheus was not ready within 30 s:\n{prometheus.Log}");
            await Task.Delay(100, cancel);
        }
    }

    /// <summary>
    /// <c>GET /api/v1/query</c> at <paramref name="at"/>: the result (<c>data.result</c>) on success, or the error Prometheus
    /// reported (a parse error is <c>bad_data</c>).
    /// </summary>
    public async Task<QueryAnswer> QueryAsync(string expression, DateTimeOffset at, CancellationToken cancel)
    {
        string url = $"/api/v1/query?query={Uri.EscapeDataString(expression)}&time={Seconds(at)}";
        using var response = await Client.GetAsync(url, cancel);
        var body = JsonNode.Parse(await response.Content.ReadAsStringAsync(cancel))!;
        if ((string?)body["status"] != "success")
            return new QueryAnswer(false, $"{(string?)body["errorType"]}: {(string?)body["error"]}", "", []);
        var data = body["data"]!;
        string type = (string)data["resultType"]!;
        var values = new List<(IReadOnlyDictionary<string, string> Labels, string Value)>();
        switch (type)
        {
            case "vector":
                foreach (var sample in data["result"]!.AsArray())
                    values.Add((Labels(sample!["metric"]), (string)sample["value"]![1]!));
                break;
            case "scalar":
                values.Add((new Dictionary<string, string>(), (string)data["result"]![1]!));
                break;
            default:
                return new QueryAnswer(false, $"result type {type}, not an instant vector or scalar", type, []);
        }
        return new QueryAnswer(true, null, type, values);
    }

    /// <summary>
    /// What Grafana's <c>label_values(selector, label)</c> lists: <c>GET /api/v1/label/{label}/values?match[]=selector</c>
    /// over [<paramref name="from"/>, <paramref name="to"/>].
    /// </summary>
    public async Task<IReadOnlyList<string>> LabelValuesAsync(string selector, string label, DateTimeOffset from, DateTimeOffset to, CancellationToken cancel)
    {
        string url = $"/api/v1/label/{Uri.EscapeDataString(label)}/values?match[]={Uri.EscapeDataString(selector)}&start={Seconds(from)}&end={Seconds(to)}";
        using var response = await Client.GetAsync(url, cancel);
        var body = JsonNode.Parse(await response.Content.ReadAsStringAsync(cancel))!;
        if ((string?)body["status"] != "success")
            throw new InvalidOperationException($"label_values({selector}, {label}): {(string?)body["errorType"]}: {(string?)body["error"]}");
        return body["data"]!.AsArray().Select(v => (string)v!).ToList();
    }

    public static string Seconds(DateTimeOffset at) => (at.ToUnixTimeMilliseconds() / 1000.0).ToString("F3", CultureInfo.InvariantCulture);

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
            }
        }
        catch (InvalidOperationException) { }
        catch (TimeoutException) { }
        _process.Dispose();
        try { Directory.Delete(_root, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    private void Append(string? line)
    {
        if (line is null) return;
        lock (_log) _log.AppendLine(line);
    }

    private static Dictionary<string, string> Labels(JsonNode? metric) =>
        metric?.AsObject().ToDictionary(p => p.Key, p => (string)p.Value!) ?? [];

    private static int FreeLoopbackPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

/// <summary>One answer of <c>/api/v1/query</c>: the samples (label set, value as Prometheus writes it) or the error.</summary>
public sealed record QueryAnswer(bool Ok, string? Error, string ResultType, IReadOnlyList<(IReadOnlyDictionary<string, string> Labels, string Value)> Samples)
{
    /// <summary>Samples with a finite value (Grafana draws nothing for NaN, e.g. a quantile over an empty window).</summary>
    public int FiniteSamples => Samples.Count(s => double.TryParse(s.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v));
}
