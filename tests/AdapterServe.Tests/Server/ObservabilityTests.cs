using System.Collections.Concurrent;
using System.Globalization;
using System.Text.RegularExpressions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Tests.Server;

/// <summary>Health, the Prometheus endpoint and the one-line-per-request log, on the real engine.</summary>
[Collection(RealServerCollection.Name)]
public sealed class ObservabilityTests(RealServer server)
{
    [Fact]
    public async Task Health_is_200_with_the_model_once_loaded()
    {
        var (status, body) = await Http.GetAsync(server.Client, "/health");
        Assert.Equal(200, status);
        Assert.Equal("ok", (string?)body!["status"]);
        Assert.Equal("tiny", (string?)body["model"]);
    }

    [Fact]
    public async Task Each_generation_request_writes_one_information_line_with_its_numbers_and_never_the_prompt()
    {
        var capture = new LogCapture();
        var settings = TinyModel.Settings();
        settings["Serilog:MinimumLevel:Default"] = "Debug";
        await using var factory = new ServerFactory(settings, services: s => s.AddSingleton<ILoggerProvider>(capture));
        var client = factory.CreateClient();
        await TinyModel.WaitUntilReadyAsync(factory.Services.GetRequiredService<AdapterServe.Engine.IGenerationEngine>());
        capture.Clear();

        const string secret = "zebra quokka seven";
        var (status, body) = await Http.PostAsync(client, "/v1/completions",
            $$"""{"model":"tiny","prompt":"{{secret}}","max_tokens":3,"temperature":0,"ignore_eos":true,"frobnicate":[1] }""");
        Assert.Equal(200, status);
        await Http.GetAsync(client, "/health");

        var lines = capture.Entries.Where(e => e.Category.EndsWith("RequestLog", StringComparison.Ordinal)).ToList();
        var line = Assert.Single(lines, l => l.Level == LogLevel.Information);   // one line per request
        Assert.Contains("POST /v1/completions 200", line.Message);
        Assert.Contains("model=tiny", line.Message);
        Assert.Contains($"prompt_tokens={(int)body!["usage"]!["prompt_tokens"]!}", line.Message);
        Assert.Contains("completion_tokens=3", line.Message);
        Assert.Contains("finish=length", line.Message);
        Assert.Matches(new Regex(@"ttft_ms=\d+(\.\d)? total_ms=\d+(\.\d)?"), line.Message);
        var health = Assert.Single(lines, l => l.Message.Contains("/health", StringComparison.Ordinal));
        Assert.Equal(LogLevel.Debug, health.Level);                       // probes do not flood the Information log
        Assert.Contains(capture.Entries, e => e.Level == LogLevel.Debug && e.Category.EndsWith("CompletionRequest", StringComparison.Ordinal)
                                               && e.Message.Contains("frobnicate", StringComparison.Ordinal));   // unknown fields: ignored, named at Debug
        Assert.DoesNotContain(capture.Entries, e => e.Level >= LogLevel.Information && e.Message.Contains("quokka", StringComparison.Ordinal));
    }
}

/// <summary>Every log event the server writes (Serilog forwards to registered providers).</summary>
internal sealed class LogCapture : ILoggerProvider
{
    public sealed record Entry(string Category, LogLevel Level, string Message);

    private readonly ConcurrentQueue<Entry> _entries = new();
    public IReadOnlyList<Entry> Entries => _entries.ToList();
    public void Clear() => _entries.Clear();

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);
    public void Dispose() { }

    private sealed class Logger(LogCapture owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            string source = state is Serilog.Events.LogEvent e && e.Properties.TryGetValue("SourceContext", out var sc) ? sc.ToString().Trim('"') : category;
            owner._entries.Enqueue(new Entry(source, logLevel, formatter(state, exception)));
        }
    }
}

/// <summary>The Prometheus text of <c>/metrics</c>, with sample values by series.</summary>
internal sealed record Metrics(string Text)
{
    public static async Task<Metrics> ReadAsync(HttpClient client)
    {
        using var response = await client.GetAsync("/metrics", TestContext.Current.CancellationToken);
        Assert.Equal(200, (int)response.StatusCode);
        return new Metrics(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }

    /// <summary>The value of the series <paramref name="series"/> (name and labels as printed), 0 when absent.</summary>
    public double Value(string series)
    {
        foreach (var line in Text.Split('\n'))
            if (line.StartsWith(series + " ", StringComparison.Ordinal))
                return double.Parse(line[(series.Length + 1)..].Trim(), CultureInfo.InvariantCulture);
        return 0;
    }
}

/// <summary>
/// Request counters of the process's Prometheus registry, which every test server in this process shares and serves
/// model "tiny" through: counted alone, after the parallel tests, so that no other test's request lands in between.
/// </summary>
[Collection(RequestCountersCollection.Name)]
public sealed class RequestCounterTests(RealServer server)
{
    [Fact]
    public async Task Metrics_count_requests_by_model_and_status_next_to_the_engines_token_metrics()
    {
        string ok = """adapterserve_requests_total{model="tiny",status="200"}""";
        string notFound = """adapterserve_requests_total{model="unknown",status="404"}""";
        string invalid = """adapterserve_requests_total{model="tiny",status="400"}""";
        var before = await Metrics.ReadAsync(server.Client);

        await server.PostAsync("/v1/completions", """{"model":"tiny","prompt":"a","max_tokens":2}""");
        await Http.StreamAsync(server.Client, "/v1/chat/completions", """{"model":"tiny","messages":[{"role":"user","content":"a"}],"max_tokens":2,"stream":true}""");
        await server.PostAsync("/v1/completions", """{"model":"no-such-adapter","prompt":"a"}""");
        await server.PostAsync("/v1/completions", """{"model":"tiny","prompt":"a","temperature":9}""");

        var after = await Metrics.ReadAsync(server.Client);
        Assert.Equal(2, after.Value(ok) - before.Value(ok));
        Assert.Equal(1, after.Value(notFound) - before.Value(notFound));
        Assert.Equal(1, after.Value(invalid) - before.Value(invalid));
        Assert.DoesNotContain("no-such-adapter", after.Text);
        foreach (var name in new[] { "adapterserve_time_to_first_token_seconds", "adapterserve_time_per_output_token_seconds", "adapterserve_e2e_request_latency_seconds",
                                     "adapterserve_num_requests_running", "adapterserve_num_requests_waiting", "adapterserve_batch_size", "adapterserve_prompt_tokens_total", "adapterserve_generation_tokens_total" })
            Assert.Contains(name, after.Text);
        foreach (var noise in new[] { "quic", "microsoft_aspnetcore", "system_net", "system_runtime", "kestrel" })
            Assert.DoesNotContain(noise, after.Text, StringComparison.OrdinalIgnoreCase);
    }
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RequestCountersCollection : ICollectionFixture<RealServer>
{
    public const string Name = "RequestCounters";
}
