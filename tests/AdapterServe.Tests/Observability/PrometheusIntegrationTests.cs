using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Server;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.Observability;

/// <summary>
/// A real server on loopback (Kestrel, port 0, the tiny model, <c>--gateway-metrics</c>), scraped every second by a real
/// Prometheus, under a load of the base model, three LoRAs (more than the host tier holds, so adapters are loaded and
/// evicted), an OMoE and a LoRA-Mixer over the LoRAs. Once the load has run
/// long enough, the instant <see cref="EvaluatedAt"/> is fixed and the queries are evaluated there.
/// </summary>
public sealed class ScrapedServer : IAsyncLifetime
{
    public const string AdminKey = "sk-admin-prometheus";
    /// <summary>Seconds of load before <see cref="EvaluatedAt"/>: longer than the rate window, so every window is full of it.</summary>
    private const int LoadSeconds = 14;

    /// <summary>
    /// Grafana's <c>$__rate_interval</c> is max($__interval + scrape interval, 4 × scrape interval) = 4 s at the test's
    /// 1 s scrape; the test widens it to 10 s so that a pause of a busy CI machine cannot empty a window.
    /// </summary>
    public const string RateInterval = "10s";

    private readonly string _id = Guid.NewGuid().ToString("N")[..6];
    private ServerFactory? _factory;

    public PrometheusProcess Prometheus { get; private set; } = null!;
    public HttpClient Client { get; private set; } = null!;
    public IReadOnlyList<string> Loras { get; private set; } = [];
    /// <summary>The mixture adapters loaded and driven, by <c>peft_type</c>.</summary>
    public IReadOnlyDictionary<string, string> Mixtures { get; private set; } = new Dictionary<string, string>();
    public DateTimeOffset FirstScrape { get; private set; }
    public DateTimeOffset EvaluatedAt { get; private set; }
    public string Skipped { get; private set; } = "";
    /// <summary>Requests of the load by HTTP status.</summary>
    public IReadOnlyDictionary<int, int> Statuses { get; private set; } = new Dictionary<int, int>();

    /// <summary>Grafana's <c>$__range</c> for a dashboard opened on [first scrape, <see cref="EvaluatedAt"/>].</summary>
    public string Range => $"{(int)Math.Ceiling((EvaluatedAt - FirstScrape).TotalSeconds)}s";

    public async ValueTask InitializeAsync()
    {
        if (!PrometheusProcess.Installed)
        {
            Skipped = $"{PrometheusProcess.Binary} not installed (Debian's prometheus package; .ci/run installs it): the dashboard is not checked against a real Prometheus";
            return;
        }
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(150));
        var cancel = timeout.Token;

        var settings = TinyModel.Settings();
        settings["Server:Host"] = "127.0.0.1";
        settings["Server:Port"] = "0";
        settings["Server:GatewayMetrics"] = "true";
        settings["admin-key"] = AdminKey;
        settings["Adapters:Residency:MaxHostAdapters"] = "2";       // three LoRAs (and the mixtures) cycle through two host slots
        _factory = new ServerFactory(settings);
        _factory.UseKestrel();
        _factory.StartServer();
        var address = new Uri(_factory.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single());
        Client = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(60) };
        await TinyModel.WaitUntilReadyAsync(_factory.Services.GetRequiredService<IGenerationEngine>());

        Prometheus = await PrometheusProcess.StartAsync($"{address.Host}:{address.Port}", cancel);
        FirstScrape = await FirstSuccessfulScrapeAsync(cancel);

        // Loads happen after the first scrape, so the load counters and histograms rise inside the dashboard's range.
        var loras = new List<string>();
        for (int i = 0; i < 3; i++)
        {
            string name = $"prom-{_id}-lora{i}";
            await UploadAsync(name, TestAdapter.Lora(r: 4, alpha: 8, projections: ProjectionNames.All, seed: 900 + i, baseModel: TinyModel.Config).Files(), cancel);
            loras.Add(name);
        }
        Loras = loras;
        var mixtures = new Dictionary<string, string> { ["OMOE"] = $"prom-{_id}-omoe", ["LORA_MIXER"] = $"prom-{_id}-mixer" };
        await UploadAsync(mixtures["OMOE"], Omoe(seed: 910).Files(), cancel);
        await UploadAsync(mixtures["LORA_MIXER"], LoraMixer(loras, topK: 2, seed: 911), cancel);
        Mixtures = mixtures;

        await DriveAsync([TinyModel.Id, .. loras, .. mixtures.Values], cancel);
        await Task.Delay(TimeSpan.FromSeconds(2.5), cancel);            // the scrapes up to EvaluatedAt are stored
    }

    public async ValueTask DisposeAsync()
    {
        if (Prometheus is not null) await Prometheus.DisposeAsync();
        Client?.Dispose();
        if (_factory is not null) await _factory.DisposeAsync();
    }

    /// <summary>Four clients in a loop over every model, half of them streaming, plus an unknown model now and then (404).</summary>
    private async Task DriveAsync(IReadOnlyList<string> models, CancellationToken cancel)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var statuses = new Dictionary<int, int>();
        var failures = new List<string>();
        async Task RunClientAsync(int worker)
        {
            for (int i = 0; !stop.IsCancellationRequested; i++)
            {
                int n = worker + 4 * i;
                bool unknown = worker == 0 && i % 6 == 1;
                string model = unknown ? $"prom-{_id}-no-such-model" : models[n % models.Count];
                var body = new JsonObject
                {
                    ["model"] = model, ["prompt"] = $"request {n} of worker {worker}", ["max_tokens"] = 6 + n % 5,
                    ["temperature"] = 0, ["ignore_eos"] = true, ["stream"] = n % 2 == 0,
                };
                int status;
                string text;
                try
                {
                    using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
                    using var response = await Client.SendAsync(request, cancel);
                    status = (int)response.StatusCode;
                    text = await response.Content.ReadAsStringAsync(cancel);
                }
                catch (HttpRequestException e) { lock (failures) failures.Add($"{model}: {e.Message}"); continue; }
                lock (statuses) statuses[status] = statuses.GetValueOrDefault(status) + 1;
                bool expected = unknown ? status == 404 : status == 200 && !text.Contains("\"error\"", StringComparison.Ordinal);
                if (!expected) lock (failures) failures.Add($"{model}: {status} {text[..Math.Min(text.Length, 300)]}");
            }
        }
        var workers = Enumerable.Range(0, 4).Select(w => Task.Run(() => RunClientAsync(w), cancel)).ToList();
        await Task.Delay(TimeSpan.FromSeconds(LoadSeconds), cancel);
        EvaluatedAt = DateTimeOffset.UtcNow;
        stop.Cancel();
        await Task.WhenAll(workers);
        Statuses = statuses;
        if (failures.Count > 0) throw new InvalidOperationException($"the load got {failures.Count} unexpected answers, e.g.:\n{string.Join("\n", failures.Take(5))}");
        if (statuses.GetValueOrDefault(200) < models.Count) throw new InvalidOperationException($"only {statuses.GetValueOrDefault(200)} requests succeeded in {LoadSeconds} s");
    }

    private async Task<DateTimeOffset> FirstSuccessfulScrapeAsync(CancellationToken cancel)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            var now = DateTimeOffset.UtcNow;
            var up = await Prometheus.QueryAsync($"up{{job=\"{PrometheusProcess.Job}\"}}", now, cancel);
            if (up.Ok && up.Samples.Any(s => s.Value == "1")) return now.AddSeconds(-1);
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"Prometheus did not scrape the server within 30 s ({up.Error ?? "up = " + string.Join(",", up.Samples.Select(s => s.Value))}):\n{Prometheus.Log}");
            await Task.Delay(200, cancel);
        }
    }

    private async Task UploadAsync(string name, IEnumerable<(string Name, byte[] Bytes)> files, CancellationToken cancel)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/adapters")
        {
            Content = AdapterApiHost.Form(name, files.Select(f => (f.Name, (string?)f.Name, f.Bytes))),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminKey);
        using var response = await Client.SendAsync(request, cancel);
        if ((int)response.StatusCode != 201)
            throw new InvalidOperationException($"upload of '{name}': {(int)response.StatusCode} {await response.Content.ReadAsStringAsync(cancel)}");
    }

    /// <summary>An OMoE (methods.md §4.2) of 3 rank-4 experts on every projection of the tiny model, dense routing.</summary>
    private static TestAdapter Omoe(int seed)
    {
        const int experts = 3, rank = 4;
        var adapter = new TestAdapter
        {
            Config = new JsonObject
            {
                ["peft_type"] = "OMOE", ["num_experts"] = experts, ["r"] = rank, ["lora_alpha"] = 2.0 * rank, ["top_k"] = null,
                ["rescale"] = "norm", ["eps"] = 1e-6,
                ["target_modules"] = new JsonArray(ProjectionNames.All.Select(p => (JsonNode)p.ShortName()).ToArray()),
            },
        };
        var random = new Random(seed);
        for (int layer = 0; layer < TinyModel.Config.NumHiddenLayers; layer++)
            foreach (var p in ProjectionNames.All)
            {
                var (dIn, dOut) = TinyModel.Config.ProjectionShape(p);
                string prefix = TestAdapter.Prefix(layer, p);
                for (int i = 0; i < experts; i++)
                {
                    adapter.Add($"{prefix}.omoe_A.{i}", [rank, dIn], random);
                    adapter.Add($"{prefix}.omoe_B.{i}", [dOut, rank], random);
                }
                adapter.Add($"{prefix}.omoe_router.weight", [experts, dIn], random);
            }
        return adapter;
    }

    /// <summary>A LoRA-Mixer (methods.md §4.1) over registered LoRAs referenced by name: config + <c>mixer_model.safetensors</c>.</summary>
    private static (string Name, byte[] Bytes)[] LoraMixer(IReadOnlyList<string> experts, int topK, int seed)
    {
        var config = new JsonObject
        {
            ["peft_type"] = "LORA_MIXER", ["experts"] = new JsonArray(experts.Select(e => (JsonNode)e).ToArray()), ["top_k"] = topK,
            ["renormalize"] = true, ["target_modules"] = new JsonArray(ProjectionNames.All.Select(p => (JsonNode)p.ShortName()).ToArray()),
        };
        var routers = new TestAdapter();
        var random = new Random(seed);
        for (int layer = 0; layer < TinyModel.Config.NumHiddenLayers; layer++)
            foreach (var p in ProjectionNames.All)
            {
                var (dIn, _) = TinyModel.Config.ProjectionShape(p);
                routers.Add($"{TestAdapter.Prefix(layer, p)}.router.weight", [experts.Count, dIn], random);   // [E, d_in]
                routers.Add($"{TestAdapter.Prefix(layer, p)}.router.bias", [experts.Count], random);          // [E]
            }
        return [("adapter_config.json", Encoding.UTF8.GetBytes(config.ToJsonString())), ("mixer_model.safetensors", routers.SafetensorsBytes())];
    }
}

/// <summary>
/// Every PromQL expression of the provisioned Grafana dashboard (<c>deploy/grafana</c>) run through a real Prometheus's
/// HTTP API (<c>/api/v1/query</c>) after it scraped a loaded server: each must parse and return at least one finite
/// sample; a panel whose query returns nothing fails with its title. The expert panels run on an OMoE and a LoRA-Mixer
/// that served tokens.
/// </summary>
public sealed class PrometheusIntegrationTests(ScrapedServer server) : IClassFixture<ScrapedServer>
{
    /// <summary>Series that other branches add, with the branch: their panels run once the build declares them.</summary>
    private static readonly Dictionary<string, string> FromOtherBranches = new()
    {
        ["adapterserve_expert_selections_total"] = "mix",
        ["adapterserve_expert_routed_tokens_total"] = "mix",
        ["adapterserve_expert_load_balance"] = "mix",
    };

    private const string StepFailures = "adapterserve_engine_step_failures_total";
    private static readonly string[] MixtureKinds = ["LORA_MIXER", "OMOE"];

    private static bool IsExpert(GrafanaDashboard.Target t) => GrafanaDashboard.MetricNames(t.Expression).Any(n => n.StartsWith("adapterserve_expert_", StringComparison.Ordinal));
    private static bool IsStepFailures(GrafanaDashboard.Target t) => GrafanaDashboard.MetricNames(t.Expression).Contains(StepFailures);

    private Dictionary<string, string> Values(string adapter, string module) => new()
    {
        ["adapter"] = adapter, ["module"] = module,
        ["__rate_interval"] = ScrapedServer.RateInterval, ["__interval"] = "1s", ["__range"] = server.Range,
    };

    [Fact]
    public void The_dashboard_reads_only_series_the_server_declares_and_every_panel_has_a_query_on_the_provisioned_datasource()
    {
        var dashboard = GrafanaDashboard.Load();
        string provisioned = File.ReadAllText(Path.Combine(GrafanaDashboard.Folder, "datasource.yml"));
        var uid = System.Text.RegularExpressions.Regex.Match(provisioned, @"uid:\s*(\S+)").Groups[1].Value;
        Assert.False(string.IsNullOrEmpty(uid), "the provisioned datasource has no uid for the panels to name");
        foreach (var panel in dashboard.Panels.Where(p => (string?)p["type"] != "row"))
        {
            string title = (string)panel["title"]!;
            Assert.True(panel["targets"] is JsonArray { Count: > 0 }, $"panel '{title}' has no query");
            Assert.Equal(uid, (string?)panel["datasource"]?["uid"]);
            foreach (var t in panel["targets"]!.AsArray()) Assert.Equal(uid, (string?)t!["datasource"]?["uid"]);
        }
        Assert.Contains(dashboard.Variables, v => v.Name == "adapter" && v.Selector == "adapterserve_expert_selections_total" && v.Label == "adapter");

        var declared = DeclaredNames();
        var problems = new List<string>();
        foreach (var t in dashboard.Targets)
            foreach (var name in GrafanaDashboard.MetricNames(t.Expression))
                if (!declared.Contains(name) && !FromOtherBranches.ContainsKey(name))
                    problems.Add($"panel '{t.Panel}' ({t.RefId}) reads {name}, which no AdapterServe assembly declares");
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public async Task Every_dashboard_expression_parses_in_prometheus()
    {
        SkipWithoutPrometheus();
        var dashboard = GrafanaDashboard.Load();
        string adapter = server.Mixtures.Values.FirstOrDefault() ?? "none";
        var problems = new List<string>();
        foreach (var t in dashboard.Targets)
        {
            var answer = await server.Prometheus.QueryAsync(GrafanaDashboard.Substitute(t.Expression, Values(adapter, ".*")), server.EvaluatedAt, TestContext.Current.CancellationToken);
            if (!answer.Ok) problems.Add($"panel '{t.Panel}' ({t.RefId}): {answer.Error}\n  {t.Expression}");
        }
        foreach (var v in dashboard.Variables)
        {
            var answer = await server.Prometheus.QueryAsync($"group by ({v.Label}) ({GrafanaDashboard.Substitute(v.Selector, Values(adapter, ".*"))})", server.EvaluatedAt, TestContext.Current.CancellationToken);
            if (!answer.Ok) problems.Add($"variable ${v.Name}: {answer.Error}");
        }
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public async Task Serving_panels_return_data_from_a_real_prometheus_scraping_the_loaded_server()
    {
        SkipWithoutPrometheus();
        var targets = GrafanaDashboard.Load().Targets.Where(t => !IsExpert(t) && !IsStepFailures(t)).ToList();
        Assert.Contains(targets, t => t.Expression.Contains("adapterserve_requests_total", StringComparison.Ordinal));
        Assert.Contains(targets, t => t.Expression.Contains("vllm:", StringComparison.Ordinal));
        await AssertAllReturnDataAsync(targets, Values("none", ".*"), "");

        // The load did what the panels are meant to show: successes and 404s, adapter loads beyond the host tier, evictions.
        Assert.True(server.Statuses.GetValueOrDefault(200) > 0 && server.Statuses.GetValueOrDefault(404) > 0, Describe(server.Statuses));
        await AssertPositiveAsync($"sum(adapterserve_requests_total{{model=\"{server.Loras[0]}\", status=\"200\"}})");
        await AssertPositiveAsync("sum(increase(adapterserve_adapter_evictions_total[" + server.Range + "]))");
    }

    [Fact]
    public async Task Expert_panels_return_data_for_every_mixture_kind_the_build_registers()
    {
        SkipWithoutPrometheus();
        Assert.Equal(MixtureKinds.Order(), server.Mixtures.Keys.Order());      // every mixture kind the tests drive is served

        var dashboard = GrafanaDashboard.Load();
        var targets = dashboard.Targets.Where(IsExpert).ToList();
        Assert.Contains(targets, t => t.Panel.Contains("layer × expert", StringComparison.Ordinal));
        var adapterVariable = dashboard.Variables.Single(v => v.Name == "adapter");
        var moduleVariable = dashboard.Variables.Single(v => v.Name == "module");
        var adapters = await server.Prometheus.LabelValuesAsync(adapterVariable.Selector, adapterVariable.Label, server.FirstScrape, server.EvaluatedAt, TestContext.Current.CancellationToken);
        var problems = new List<string>();
        foreach (var (kind, mixture) in server.Mixtures)
        {
            Assert.True(adapters.Contains(mixture), $"${adapterVariable.Name} lists {string.Join(", ", adapters)}, not the {kind} '{mixture}'");
            var modules = await server.Prometheus.LabelValuesAsync(GrafanaDashboard.Substitute(moduleVariable.Selector, Values(mixture, "")), moduleVariable.Label,
                server.FirstScrape, server.EvaluatedAt, TestContext.Current.CancellationToken);
            Assert.True(modules.Count > 0, $"${moduleVariable.Name} lists no module for the {kind} '{mixture}'");
            problems.AddRange(await NoDataAsync(targets, Values(mixture, moduleVariable.AllValue ?? ".*"), $"{kind} '{mixture}', all modules"));
            problems.AddRange(await NoDataAsync(targets, Values(mixture, modules[0]), $"{kind} '{mixture}', module {modules[0]}"));

            // The heatmap has one cell per (layer, expert) of the mixture, each a utilisation in [0, 1].
            var heatmap = targets.First(t => t.Panel.Contains("layer × expert", StringComparison.Ordinal));
            var cells = await server.Prometheus.QueryAsync(GrafanaDashboard.Substitute(heatmap.Expression, Values(mixture, ".*")), server.EvaluatedAt, TestContext.Current.CancellationToken);
            int layers = cells.Samples.Select(s => s.Labels["layer"]).Distinct().Count(), experts = cells.Samples.Select(s => s.Labels["expert"]).Distinct().Count();
            Assert.Equal(TinyModel.Config.NumHiddenLayers, layers);
            Assert.Equal(kind == "LORA_MIXER" ? server.Loras.Count : 3, experts);
            Assert.Equal(layers * experts, cells.Samples.Count);
            Assert.All(cells.Samples, c => Assert.InRange(double.Parse(c.Value, CultureInfo.InvariantCulture), 0.0, 1.0));
        }
        Assert.True(problems.Count == 0, $"{problems.Count} queries failed (load: {Describe(server.Statuses)}):\n{string.Join("\n", problems)}");
    }

    [Fact]
    public async Task Step_failure_panel_returns_data_by_outcome()
    {
        SkipWithoutPrometheus();
        var targets = GrafanaDashboard.Load().Targets.Where(IsStepFailures).ToList();
        Assert.NotEmpty(targets);
        await AssertAllReturnDataAsync(targets, Values("none", ".*"), "");
        foreach (var t in targets)
        {
            var answer = await server.Prometheus.QueryAsync(GrafanaDashboard.Substitute(t.Expression, Values("none", ".*")), server.EvaluatedAt, TestContext.Current.CancellationToken);
            Assert.All(answer.Samples, s => Assert.Contains(s.Labels["outcome"], new[] { "retried_ok", "isolated", "failed" }));
        }
    }

    private void SkipWithoutPrometheus()
    {
        if (server.Skipped.Length > 0) Assert.Skip(server.Skipped);
    }

    private async Task AssertAllReturnDataAsync(IEnumerable<GrafanaDashboard.Target> targets, IReadOnlyDictionary<string, string> values, string context)
    {
        var problems = await NoDataAsync(targets, values, context);
        Assert.True(problems.Count == 0, $"{problems.Count} queries failed (load: {Describe(server.Statuses)}):\n{string.Join("\n", problems)}");
    }

    /// <summary>The targets that do not parse or return no finite sample, each named by panel title and refId.</summary>
    private async Task<List<string>> NoDataAsync(IEnumerable<GrafanaDashboard.Target> targets, IReadOnlyDictionary<string, string> values, string context)
    {
        var problems = new List<string>();
        foreach (var t in targets)
        {
            string expression = GrafanaDashboard.Substitute(t.Expression, values);
            var answer = await server.Prometheus.QueryAsync(expression, server.EvaluatedAt, TestContext.Current.CancellationToken);
            string where = $"panel '{t.Panel}' ({t.RefId}{(context.Length > 0 ? ", " + context : "")})";
            if (!answer.Ok) problems.Add($"{where}: {answer.Error}\n  {expression}");
            else if (answer.FiniteSamples == 0)
                problems.Add($"{where} returns no data ({answer.Samples.Count} samples, none finite)\n  {expression}");
        }
        return problems;
    }

    private async Task AssertPositiveAsync(string expression)
    {
        var answer = await server.Prometheus.QueryAsync(expression, server.EvaluatedAt, TestContext.Current.CancellationToken);
        Assert.True(answer.Ok, answer.Error);
        double value = answer.Samples.Select(s => double.Parse(s.Value, CultureInfo.InvariantCulture)).DefaultIfEmpty(0).Sum();
        Assert.True(value > 0, $"{expression} = {value}");
    }

    private static string Describe(IReadOnlyDictionary<int, int> statuses) => string.Join(", ", statuses.OrderBy(s => s.Key).Select(s => $"{s.Value}× {s.Key}"));

    /// <summary>Metric names the AdapterServe assemblies of this build declare (string literals, UTF-16 in the metadata).</summary>
    private static HashSet<string> DeclaredNames()
    {
        var images = Directory.EnumerateFiles(AppContext.BaseDirectory, "AdapterServe.*.dll")
            .Where(f => !Path.GetFileName(f).StartsWith("AdapterServe.Tests", StringComparison.Ordinal))
            .Select(File.ReadAllBytes).ToList();
        var names = GrafanaDashboard.Load().Targets.SelectMany(t => GrafanaDashboard.MetricNames(t.Expression)).Concat(FromOtherBranches.Keys).Distinct();
        return names.Where(n =>
        {
            byte[] utf16 = Encoding.Unicode.GetBytes(n);
            return images.Any(image => image.AsSpan().IndexOf(utf16) >= 0);
        }).ToHashSet();
    }
}
