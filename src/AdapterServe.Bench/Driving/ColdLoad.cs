using System.Diagnostics;
using AdapterServe.Adapters;

namespace AdapterServe.Bench.Driving;

/// <param name="ReadMs">From <see cref="AdapterResidencyCache.Acquire"/> until the version is in the host tier (file read, tensors built).</param>
/// <param name="ReadyMs">From <see cref="AdapterResidencyCache.Acquire"/> until <see cref="AdapterResidencyCache.TryGetReady"/> is true (on the device).</param>
public sealed record ColdLoadSample(double ReadMs, double ReadyMs);

/// <summary>
/// Times one adapter version from disk to ready on the device through the residency cache itself: a lease is taken
/// (which starts the background read into the host tier), then the version is promoted to the device as the engine
/// thread would between steps. Only while no request is running: the engine thread then never touches the cache.
/// </summary>
public static class ColdLoad
{
    public static async Task<ColdLoadSample> TimeAsync(AdapterResidencyCache cache, AdapterRecord record, CancellationToken ct)
    {
        long started = Stopwatch.GetTimestamp();
        var lease = cache.Acquire(record);
        try
        {
            await lease.HostLoaded.WaitAsync(ct);
            double read = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
            while (!cache.TryGetReady(lease, out _))
                await Task.Delay(1, ct);   // only if the host copy went away before the promotion: the cache reloads it
            return new ColdLoadSample(read, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
        catch (AdapterValidationException e)
        {
            throw new BenchException($"adapter '{record.Name}' failed to load from {record.Directory}: {e.Message}", e);
        }
        finally
        {
            cache.Release(lease);
        }
    }
}
