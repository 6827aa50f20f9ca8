using System.Globalization;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Adapters.Store;

/// <summary>
/// TEST-ONLY hook for the crash tests: with <c>ADAPTERSERVE_TEST_STORE_DELAY_MS</c> set, every store write logs
/// "Store write paused at {Point}" and sleeps that long at each named point (or only at the points listed, comma-separated,
/// in <c>ADAPTERSERVE_TEST_STORE_DELAY_AT</c>), so a test can <c>kill -9</c> the process exactly there. Unset (always,
/// outside tests) it does nothing. The points, in write order: <c>receiving</c> (after each chunk of an upload),
/// <c>received</c> (files staged, before validation), <c>validated</c> (files flushed into the version folder, before the
/// manifest), <c>manifest</c> (manifest written, before the rename), <c>renamed</c> (version folder in place, before it is
/// published), <c>withdrawn</c> (an unload/delete made durable, before the files go).
/// </summary>
public sealed class StoreWritePause
{
    public const string DelayVariable = "ADAPTERSERVE_TEST_STORE_DELAY_MS";
    public const string PointsVariable = "ADAPTERSERVE_TEST_STORE_DELAY_AT";

    private readonly TimeSpan _delay;
    private readonly HashSet<string>? _points;
    private readonly ILogger _logger;

    public StoreWritePause(ILogger logger, Func<string, string?>? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        _logger = logger;
        if (int.TryParse(environment(DelayVariable), NumberStyles.None, CultureInfo.InvariantCulture, out int ms) && ms > 0)
            _delay = TimeSpan.FromMilliseconds(ms);
        if (environment(PointsVariable) is { Length: > 0 } points)
            _points = [.. points.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];
        if (Enabled) _logger.LogWarning("TEST HOOK {Variable} is set: store writes pause {Delay} ms at {Points}", DelayVariable, ms, environment(PointsVariable) ?? "every point");
    }

    public bool Enabled => _delay > TimeSpan.Zero;

    public void At(string point)
    {
        if (!Enabled || (_points is not null && !_points.Contains(point))) return;
        _logger.LogWarning("Store write paused at {Point}", point);
        Thread.Sleep(_delay);
    }
}
