using AdapterServe.Bench.Reporting;
using AdapterServe.Bench.Scenarios;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Bench;

/// <summary>
/// The benchmark's entry point, callable in-process (tests) as well as from <c>Program</c>. Prints the human table
/// on <paramref name="output"/>, progress and errors on <paramref name="progress"/>, and writes <c>--json</c>.
/// Exit codes: 0 ok, 1 failed (or the run recorded errors, or ran past <c>--timeout-s</c>: what it measured is still written), 2 bad command line.
/// </summary>
public static class BenchProgram
{
    public static IScenario ScenarioFor(string name) => name switch
    {
        "decode" => new DecodeScenario(),
        "prefill" => new PrefillScenario(),
        "adapters" => new AdaptersScenario(),
        "load" => new LoadScenario(),
        "soak" => new SoakScenario(),
        "serve" => new ServeScenario(),
        _ => throw new UsageException($"unknown scenario '{name}'"),
    };

    public static async Task<int> RunAsync(IReadOnlyList<string> args, TextWriter output, TextWriter progress, CancellationToken ct = default)
    {
        BenchOptions options;
        try { options = BenchOptions.Parse(args); }
        catch (UsageException e)
        {
            progress.WriteLine($"error: {e.Message}");
            progress.WriteLine(BenchOptions.Usage);
            return 2;
        }

        var scenario = ScenarioFor(options.Scenario);
        using var loggers = LoggerFactory.Create(b => b.AddProvider(new ProgressLoggerProvider(progress, options.Verbose ? LogLevel.Information : LogLevel.Warning)));
        var context = new BenchContext(options, progress, loggers);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        // serve bounds itself (and reports what finished); engine scenarios are cut off here.
        if (scenario.UsesEngine) timeout.CancelAfter(TimeSpan.FromSeconds(options.TimeoutSeconds));

        BenchReport? report = null;
        try
        {
            if (scenario.UsesEngine && options.Threads is int threads) TorchSharp.torch.set_num_threads(threads);
            report = new BenchReport
            {
                Scenario = options.Scenario,
                Machine = MachineProbe.Describe(scenario.UsesEngine ? options.Dtype : null, scenario.UsesEngine ? options.Device : null, scenario.UsesEngine),
                Settings = options.ToSettings(),
            };
            await scenario.RunAsync(context, report, timeout.Token);
        }
        catch (UsageException e)
        {
            progress.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !ct.IsCancellationRequested)
        {
            // What was measured before the cut-off is still reported (and the run fails).
            string message = $"{options.Scenario} did not finish within --timeout-s {options.TimeoutSeconds}";
            if (report is null)
            {
                progress.WriteLine($"error: {message}");
                return 1;
            }
            report.Errors.Add(message + ": the figures are those measured before it was cut off");
        }
        catch (BenchException e)
        {
            progress.WriteLine($"error: {e.Message}");
            return 1;
        }
        report.TotalSeconds = context.Clock.Elapsed.TotalSeconds;
        output.Write(ReportWriter.ToTable(report));
        if (options.JsonPath is { } path)
        {
            ReportWriter.WriteJson(report, path);
            progress.WriteLine($"wrote {Path.GetFullPath(path)}");
        }
        foreach (var error in report.Errors) progress.WriteLine($"error: {error}");
        return report.Errors.Count > 0 ? 1 : 0;
    }
}
