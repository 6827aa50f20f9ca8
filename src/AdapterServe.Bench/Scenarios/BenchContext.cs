using System.Diagnostics;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Bench.Scenarios;

/// <summary>What every scenario gets: the options, a progress log (stderr), loggers for the engine, and the run's clock.</summary>
public sealed class BenchContext(BenchOptions options, TextWriter progress, ILoggerFactory loggers)
{
    public BenchOptions Options { get; } = options;
    public ILoggerFactory Loggers { get; } = loggers;
    public Stopwatch Clock { get; } = Stopwatch.StartNew();

    public void Log(string line) => progress.WriteLine($"[{Clock.Elapsed.TotalSeconds,7:0.0}s] {line}");
}

/// <summary>One benchmark scenario: fills the report with figures, ratios and memory samples.</summary>
public interface IScenario
{
    /// <summary>False for <c>serve</c>, which measures a server over HTTP and never loads TorchSharp.</summary>
    bool UsesEngine { get; }
    Task RunAsync(BenchContext context, Reporting.BenchReport report, CancellationToken ct);
}
