using System.Diagnostics;
using AdapterServe.Engine;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Bench.Driving;

/// <summary>A real <see cref="GenerationEngine"/> on a model directory, started and awaited until ready.</summary>
public sealed class BenchEngine : IAsyncDisposable
{
    public GenerationEngine Engine { get; }
    public TimeSpan LoadTime { get; }

    private BenchEngine(GenerationEngine engine, TimeSpan loadTime) => (Engine, LoadTime) = (engine, loadTime);

    public static async Task<BenchEngine> StartAsync(EngineOptions options, ILoggerFactory loggers, IAdapterBinder? adapters, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        var engine = GenerationEngine.Start(options, loggers, adapters);
        try
        {
            while (!engine.IsReady)
            {
                if (engine.LoadError is { } e) throw new BenchException($"loading the model from {options.ModelPath} failed: {e.Message}", e);
                await Task.Delay(10, ct);
            }
        }
        catch
        {
            await engine.DisposeAsync();
            throw;
        }
        return new BenchEngine(engine, sw.Elapsed);
    }

    public ValueTask DisposeAsync() => Engine.DisposeAsync();
}
