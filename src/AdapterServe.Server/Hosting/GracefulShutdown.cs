using System.Diagnostics;
using System.Globalization;
using AdapterServe.Server.OpenAI;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Hosting;

/// <summary>
/// Graceful shutdown. SIGTERM or Ctrl+C stops the application (<see cref="IHostApplicationLifetime.ApplicationStopping"/>)
/// and the server starts draining: <c>/health</c> answers 503 <c>draining</c>, new generation requests 503 with
/// <c>Retry-After</c>, and the generations already running go on for up to <see cref="ServerOptions.DrainTimeoutSeconds"/>
/// (<c>--drain-timeout</c>); past it they end with a 503 error (a streamed one with an error chunk). The wait is in
/// <see cref="StoppingAsync"/>, which the host runs before any hosted service's <c>StopAsync</c>, so Kestrel keeps
/// answering (with 503s) until the drain is over; then the host stops Kestrel and the engine and the process exits 0.
/// <see cref="HostOptions.ShutdownTimeout"/> is the drain timeout plus <see cref="CutOffGrace"/> and <see cref="StopMargin"/>.
/// </summary>
public sealed class ServerDrain(IHostApplicationLifetime lifetime, IOptions<ServerOptions> options, ILogger<ServerDrain> logger)
    : IHostedLifecycleService, IDisposable
{
    public const int MaxTimeoutSeconds = 3600;
    /// <summary>What a refused request is told to wait before it retries (another instance, or this one restarted).</summary>
    public const int RetryAfterSeconds = 5;
    /// <summary>After the drain timeout: how long the cut-off generations get to send their error and end.</summary>
    public static readonly TimeSpan CutOffGrace = TimeSpan.FromSeconds(5);
    /// <summary>For the host to stop Kestrel and the rest once the drain is over.</summary>
    public static readonly TimeSpan StopMargin = TimeSpan.FromSeconds(10);

    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(50);

    private readonly CancellationTokenSource _expired = new();
    private CancellationTokenRegistration _onStopping;
    private int _running;
    private int _draining;

    public bool IsDraining => Volatile.Read(ref _draining) == 1;
    /// <summary>Generation requests admitted and not yet answered (a stream counts until its last chunk).</summary>
    public int RunningRequests => Volatile.Read(ref _running);
    /// <summary>Cancelled when the drain timeout passes with generations still running: they end with an error.</summary>
    public CancellationToken Expired => _expired.Token;

    /// <summary>Admits a generation request: null while draining (refuse it), else a handle to dispose when it is answered.</summary>
    public IDisposable? TryAdmit()
    {
        Interlocked.Increment(ref _running);     // counted before the check, so a drain that begins now waits for it
        if (!IsDraining) return new Admission(this);
        Interlocked.Decrement(ref _running);
        return null;
    }

    private sealed class Admission(ServerDrain drain) : IDisposable
    {
        private int _disposed;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0) Interlocked.Decrement(ref drain._running);
        }
    }

    public Task StartingAsync(CancellationToken cancellationToken)
    {
        _onStopping = lifetime.ApplicationStopping.Register(BeginDraining);
        return Task.CompletedTask;
    }

    public async Task StoppingAsync(CancellationToken cancellationToken)
    {
        BeginDraining();
        var timeout = TimeSpan.FromSeconds(options.Value.DrainTimeoutSeconds);
        if (await WaitUntilIdleAsync(timeout, cancellationToken))
        {
            logger.LogInformation("Drained: no generation request is running");
            return;
        }
        logger.LogWarning("The drain timeout of {DrainTimeoutSeconds}s passed with {Running} generation request(s) still running; ending them with an error",
            options.Value.DrainTimeoutSeconds, RunningRequests);
        await _expired.CancelAsync();
        if (!await WaitUntilIdleAsync(CutOffGrace, cancellationToken))
            logger.LogWarning("{Running} generation request(s) did not end within {GraceSeconds}s of being cut off; stopping anyway", RunningRequests, CutOffGrace.TotalSeconds);
    }

    private void BeginDraining()
    {
        if (Interlocked.Exchange(ref _draining, 1) == 1) return;
        logger.LogInformation("Shutting down: /health answers 503 draining and new generation requests are refused; {Running} running generation request(s) get up to {DrainTimeoutSeconds}s to finish",
            RunningRequests, options.Value.DrainTimeoutSeconds);
    }

    private async Task<bool> WaitUntilIdleAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        long start = Stopwatch.GetTimestamp();
        while (RunningRequests > 0)
        {
            if (Stopwatch.GetElapsedTime(start) >= timeout || cancellationToken.IsCancellationRequested) return false;
            try { await Task.Delay(PollInterval, cancellationToken); }
            catch (OperationCanceledException) { return false; }
        }
        return true;
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public void Dispose()
    {
        _onStopping.Dispose();
        _expired.Dispose();
    }
}

/// <summary>While the server drains, refuses new generation requests with 503 and <c>Retry-After</c>; otherwise counts them until answered.</summary>
internal sealed class DrainGate(RequestDelegate next, ServerDrain drain)
{
    public async Task InvokeAsync(HttpContext http)
    {
        if (http.GetEndpoint()?.Metadata.GetMetadata<GenerationDoc>() is null)
        {
            await next(http);
            return;
        }
        using var admission = drain.TryAdmit();
        if (admission is null)
        {
            http.Response.Headers.RetryAfter = ServerDrain.RetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
            throw ApiException.ShuttingDown("The server is shutting down and takes no new generation requests; retry shortly.");
        }
        await next(http);
    }
}

public static class GracefulShutdownRegistration
{
    /// <summary><see cref="ServerDrain"/> as a hosted lifecycle service, and the host's shutdown timeout sized to the drain.</summary>
    public static IServiceCollection AddGracefulShutdown(this IServiceCollection services)
    {
        services.AddSingleton<ServerDrain>();
        services.AddHostedService(sp => sp.GetRequiredService<ServerDrain>());
        services.AddOptions<HostOptions>().Configure<IOptions<ServerOptions>>((host, server) =>
            host.ShutdownTimeout = TimeSpan.FromSeconds(server.Value.DrainTimeoutSeconds) + ServerDrain.CutOffGrace + ServerDrain.StopMargin);
        return services;
    }
}
