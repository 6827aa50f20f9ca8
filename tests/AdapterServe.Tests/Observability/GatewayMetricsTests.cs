using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using AdapterServe.Tests.AdapterHttp;

namespace AdapterServe.Tests.Observability;

/// <summary>
/// The vLLM-named series an inference gateway routes on, checked against the names, label sets and value meanings
/// vLLM documents (the fixture <c>vllm-gateway-metrics.txt</c>), on a real server while an adapter request runs.
/// </summary>
[Collection(AdapterHttpCollection.Name)]
public sealed partial class GatewayMetricsTests
{
    private sealed record ExpectedSeries(string Name, string Type, string[] Labels, string Meaning);

    private static IReadOnlyList<ExpectedSeries> Fixture() =>
        File.ReadAllLines(Path.Combine(AppContext.BaseDirectory, "Observability", "vllm-gateway-metrics.txt"))
            .Where(l => l.Length > 0 && !l.StartsWith('#'))
            .Select(l => l.Split(' '))
            .Select(p => new ExpectedSeries(p[0], p[1], p[2].Split(','), p[3]))
            .ToList();

    [Fact]
    public async Task Vllm_named_series_have_vllms_names_labels_and_values_while_an_adapter_request_runs()
    {
        await using var server = await AdapterServer.StartAsync(new Dictionary<string, string?> { ["Adapters:Residency:MaxDeviceAdapters"] = "3", ["Server:GatewayMetrics"] = "true" });
        await server.UploadOkAsync("gw-lora", TinyAdapters.Lora(seed: 71));
        await using var stream = await server.OpenStreamAsync(new GreedyRequest("gw-lora", "hello there", MaxTokens: 400));
        await stream.ReadTokensAsync(2);

        double before = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0;
        var (status, text) = await ScrapeAsync(server.Client);
        Assert.Equal(200, status);
        var samples = Samples(text);

        foreach (var expected in Fixture())
        {
            Assert.Contains($"# TYPE {expected.Name} {expected.Type}", text);
            var series = samples.Where(s => s.Name == expected.Name).ToList();
            Assert.True(series.Count > 0, $"{expected.Name} is missing from /metrics");
            foreach (var s in series) Assert.Equal(expected.Labels.Order(), s.Labels.Keys.Order());
            switch (expected.Meaning)
            {
                case "requests-running":
                    Assert.Equal(1, series.Single(s => s.Labels["model_name"] == AdapterServer.Base).Value);
                    break;
                case "requests-waiting":
                    Assert.Equal(0, series.Single(s => s.Labels["model_name"] == AdapterServer.Base).Value);
                    break;
                case "fraction-0-to-1":
                    var kv = series.Single(s => s.Labels["model_name"] == AdapterServer.Base).Value;
                    Assert.InRange(kv, 1e-9, 1.0);                       // one running sequence holds a slot: above 0, at most 1
                    break;
                case "unix-time-of-last-update":
                    // The picker takes the newest label set by value: it names the running adapter and the device slots.
                    var newest = series.MaxBy(s => s.Value)!;
                    Assert.Equal("gw-lora", newest.Labels["running_lora_adapters"]);
                    Assert.Equal("", newest.Labels["waiting_lora_adapters"]);
                    Assert.Equal("3", newest.Labels["max_lora"]);
                    Assert.InRange(newest.Value, before - 5, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0 + 1);
                    break;
                default: throw new InvalidOperationException($"unknown meaning '{expected.Meaning}' in the fixture");
            }
        }
        await stream.DisposeAsync();
    }

    [Fact]
    public async Task Promtool_check_metrics_accepts_the_metrics_endpoint_and_only_lints_the_vllm_colon_names_when_they_are_on()
    {
        if (!File.Exists(Promtool))
            Assert.Skip("promtool not installed (Debian's prometheus package; .ci/run installs it)");
        await using (var server = await AdapterServer.StartAsync())
        {
            await server.UploadOkAsync("gw-check", TinyAdapters.Lora(seed: 72));
            await server.CompleteAsync(new GreedyRequest("gw-check", "hello", MaxTokens: 3));
            var (_, text) = await ScrapeAsync(server.Client);
            Assert.DoesNotContain("vllm:", text);
            var (exit, output) = await CheckMetricsAsync(text);
            Assert.True(exit == 0, $"promtool check metrics failed:\n{output}");
        }
        await using (var gateway = await AdapterServer.StartAsync(new Dictionary<string, string?> { ["Server:GatewayMetrics"] = "true" }))
        {
            var (_, text) = await ScrapeAsync(gateway.Client);
            var (_, output) = await CheckMetricsAsync(text);
            // vLLM's own /metrics gets the same lint: ':' is reserved for recording rules. Nothing else may be reported.
            var problems = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            Assert.All(problems, p => Assert.Matches("^vllm:[a-z_]+ metric names should not contain ':'$", p));
        }
    }

    private const string Promtool = "/usr/bin/promtool";

    private static async Task<(int Exit, string Output)> CheckMetricsAsync(string text)
    {
        var start = new ProcessStartInfo(Promtool, ["check", "metrics"]) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        using var promtool = Process.Start(start)!;
        await promtool.StandardInput.WriteAsync(text);
        promtool.StandardInput.Close();
        string output = await promtool.StandardOutput.ReadToEndAsync() + await promtool.StandardError.ReadToEndAsync();
        await promtool.WaitForExitAsync();
        return (promtool.ExitCode, output);
    }

    internal static async Task<(int Status, string Text)> ScrapeAsync(HttpClient client)
    {
        using var response = await client.GetAsync("/metrics", TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }

    internal sealed record Sample(string Name, IReadOnlyDictionary<string, string> Labels, double Value);

    /// <summary>The text format's sample lines: <c>name{label="value",...} value</c>.</summary>
    internal static List<Sample> Samples(string text)
    {
        var samples = new List<Sample>();
        foreach (var line in text.Split('\n'))
        {
            var m = SampleLine().Match(line);
            if (!m.Success) continue;
            var labels = LabelPair().Matches(m.Groups["labels"].Value).ToDictionary(l => l.Groups[1].Value, l => l.Groups[2].Value.Replace("\\\"", "\"").Replace("\\\\", "\\"));
            samples.Add(new Sample(m.Groups["name"].Value, labels, double.Parse(m.Groups["value"].Value, CultureInfo.InvariantCulture)));
        }
        return samples;
    }

    [GeneratedRegex("""^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>.*)\})? (?<value>\S+)$""")]
    private static partial Regex SampleLine();

    [GeneratedRegex(""""([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"""")]
    private static partial Regex LabelPair();
}
