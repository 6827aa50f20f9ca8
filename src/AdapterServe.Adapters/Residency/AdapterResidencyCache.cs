using System.Diagnostics;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters;

/// <summary>
/// Two-tier residency of adapter versions, keyed by (name, version): a device tier (what the forward pass reads)
/// bounded by count and bytes, and a host tier of CPU tensors in front of the disk, also bounded. Both evict least
/// recently used versions that are not pinned and that no running sequence holds a lease on.
/// <list type="bullet">
/// <item><see cref="Acquire"/> (any thread): lease +1; starts a background load (thread pool) into the host tier
/// when the version is not resident, so no request's decode step ever waits on a disk read or an SVD.</item>
/// <item><see cref="TryGetReady"/> (engine thread, between steps): moves host → device when needed, evicting LRU;
/// false while the load runs or while every device slot is held by leases or pins; throws the load error.</item>
/// <item><see cref="Release"/> (any thread): lease −1.</item>
/// </list>
/// A lease pins its exact version: after a name is replaced, new leases name the new version while running sequences
/// keep the old one until they release it. Host tensors are created by the loader thread, device tensors by the engine
/// thread; bookkeeping is under one lock; evicted tensors are disposed (never used again: a leased version is never
/// evicted). When the device is the CPU, the device tier shares the host copy instead of duplicating it.
/// </summary>
public sealed partial class AdapterResidencyCache : IAdapterResidency, IDisposable
{
    private const string DeviceTier = "device";
    private const string HostTier = "host";

    private readonly object _gate = new();
    private readonly Dictionary<(string Name, int Version), CachedVersion> _versions = [];
    private readonly Dictionary<string, NameState> _names = new(StringComparer.Ordinal);
    private readonly ResidencyOptions _options;
    private readonly Func<AdapterRecord, LoadedAdapter> _loadToHost;
    private readonly LateBaseWeights? _baseWeights;
    private readonly Device _device;
    private readonly ILogger _logger;
    private readonly TimeProvider _time = TimeProvider.System;
    private long _tick;
    private bool _disposed;

    /// <summary>The production cache: each adapter's kind loads it into CPU tensors of <paramref name="dtype"/>.</summary>
    /// <param name="baseWeights">The frozen base weights, read by KaSA's SVD and DoRA's norms; null while the model is
    /// still loading: the engine hands them over through <see cref="ModelReady"/> (via the binder) before its first step.</param>
    /// <param name="device">The compute device (device tier).</param>
    public AdapterResidencyCache(ResidencyOptions options, IBaseWeights? baseWeights, Device device, ScalarType dtype,
        ILogger<AdapterResidencyCache>? logger = null, AdapterResidencyMetrics? metrics = null)
        : this(options, new LateBaseWeights(baseWeights), dtype, device, logger, metrics)
    {
    }

    private AdapterResidencyCache(ResidencyOptions options, LateBaseWeights baseWeights, ScalarType dtype, Device device, ILogger? logger, AdapterResidencyMetrics? metrics)
        : this(options, record => LoadedAdapter.Load(record, baseWeights, CPU, dtype), device, logger, metrics)
    {
        _baseWeights = baseWeights;
    }

    /// <param name="loadToHost">Loads one version into CPU tensors (runs on a thread-pool thread).</param>
    public AdapterResidencyCache(ResidencyOptions options, Func<AdapterRecord, LoadedAdapter> loadToHost, Device device,
        ILogger? logger = null, AdapterResidencyMetrics? metrics = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
        _loadToHost = loadToHost ?? throw new ArgumentNullException(nameof(loadToHost));
        _device = device ?? throw new ArgumentNullException(nameof(device));
        _logger = logger ?? NullLogger.Instance;
        Metrics = metrics ?? new AdapterResidencyMetrics();
        Slots = new AdapterSlotTable(options.MaxDeviceAdapters);
        UpdateGauges(new ResidencySnapshot(0, 0, 0, 0, 0));
    }

    public AdapterResidencyMetrics Metrics { get; }

    /// <summary>
    /// One slot per device-tier version (capacity <see cref="ResidencyOptions.MaxDeviceAdapters"/>): a version takes one
    /// when it enters the device tier and frees it when it leaves; kinds stack their resident adapters by slot.
    /// </summary>
    public AdapterSlotTable Slots { get; }

    /// <summary>
    /// The model is loaded: adapters are built against <paramref name="baseWeights"/> from now on (a cache built with
    /// its own loader ignores them).
    /// </summary>
    public void ModelReady(IBaseWeights baseWeights)
    {
        ArgumentNullException.ThrowIfNull(baseWeights);
        _baseWeights?.Set(baseWeights);
        // Which form the mixture kinds' few-token steps run, so an operator can see that a build without a C compiler is slower there.
        LogMixtureForm(_logger, _device.ToString(), _device.type != DeviceType.CPU ? "their tensor form (the native code serves the CPU)"
            : NativeMixtures.Available ? "in the native library (libadapterserve_native.so)"
            : "their tensor form (libadapterserve_native.so was not built: no C compiler at build time)");
    }

    /// <summary>The base weights once the model is loaded (read by loader threads).</summary>
    private sealed class LateBaseWeights(IBaseWeights? ready) : IBaseWeights
    {
        private IBaseWeights? _weights = ready;

        public void Set(IBaseWeights weights) => Volatile.Write(ref _weights, weights);

        public Tensor Weight(int layer, Projection projection) =>
            (Volatile.Read(ref _weights) ?? throw new InvalidOperationException("the base model is not loaded yet: adapters are built against its weights"))
            .Weight(layer, projection);
    }

    /// <summary>Takes a lease on <paramref name="record"/>'s exact version and starts loading it if it is not resident.</summary>
    public AdapterLease Acquire(AdapterRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        CachedVersion entry;
        AdapterLease lease;
        bool startLoad;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var key = (record.Name, record.Version);
            if (!_versions.TryGetValue(key, out entry!)) _versions[key] = entry = new CachedVersion(record);
            entry.Leases++;
            var name = NameOf(record.Name);
            name.Leases++;
            Touch(entry);
            startLoad = BeginLoadIfAbsent(entry);
            lease = new AdapterLease(entry);
        }
        if (startLoad) _ = Task.Run(() => LoadToHost(entry));
        return lease;
    }

    /// <summary>
    /// Engine thread, between steps: the device copy of the lease's version, moving it from the host tier (evicting least
    /// recently used unleased, unpinned versions) when needed. False while it is still loading, or while the device
    /// tier is full of leased or pinned versions (try again after some sequence releases its lease).
    /// </summary>
    /// <exception cref="AdapterValidationException">The load failed (or the version is larger than a whole tier).</exception>
    public bool TryGetReady(AdapterLease lease, out LoadedAdapter adapter)
    {
        ArgumentNullException.ThrowIfNull(lease);
        adapter = null!;
        var entry = lease.Entry;
        LoadedAdapter? host = null;
        bool startLoad = false;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (lease.IsReleased) throw new InvalidOperationException($"the {lease} was already released");
            if (entry.Error is { } error) throw new AdapterValidationException(error.Message, error.Code, error.StatusCode);
            Touch(entry);
            if (entry.Device is { } ready)
            {
                adapter = ready;
                return true;
            }
            if (entry.Promoting) return false;
            if (entry.Host is null)
            {
                // Still loading; or its host copy went away (only possible for a version with no lease at that moment).
                startLoad = BeginLoadIfAbsent(entry);
            }
            else
            {
                host = entry.Host;
                if (host.Bytes > _options.MaxDeviceBytes)
                    throw new AdapterValidationException(
                        $"{entry} needs {host.Bytes} bytes, more than the whole device adapter cache ({_options.MaxDeviceBytes} bytes)", "adapter_too_large", 413);
                if (!MakeDeviceRoom(host, entry)) return false;
                entry.Promoting = true;
            }
        }
        if (host is null)
        {
            if (startLoad) _ = Task.Run(() => LoadToHost(entry));
            return false;
        }

        LoadedAdapter onDevice;
        try
        {
            onDevice = IsOnDevice(host) ? host : host.To(_device);
        }
        catch (Exception e)
        {
            lock (_gate) entry.Promoting = false;
            throw new AdapterValidationException($"{entry}: moving it to {_device} failed: {e.Message}", "adapter_load_failed", 500);
        }

        ResidencySnapshot snapshot;
        lock (_gate)
        {
            entry.Promoting = false;
            if (_disposed)
            {
                if (!ReferenceEquals(onDevice, host)) onDevice.Dispose();
                throw new ObjectDisposedException(nameof(AdapterResidencyCache));
            }
            entry.Device = onDevice;
            Slots.Assign(onDevice);
            DropShadowedDependencies(entry, deviceTier: true);
            snapshot = SnapshotLocked();
            UpdateGauges(snapshot);
        }
        LogPromoted(_logger, entry.Record.Name, entry.Record.Version, onDevice.Bytes, snapshot.DeviceAdapters, snapshot.DeviceBytes);
        adapter = onDevice;
        return true;
    }

    /// <summary>Gives a lease back (idempotent). The version stays cached until evicted or forgotten.</summary>
    public void Release(AdapterLease lease)
    {
        ArgumentNullException.ThrowIfNull(lease);
        if (!lease.TryMarkReleased()) return;
        List<TaskCompletionSource>? wake = null;
        lock (_gate)
        {
            var entry = lease.Entry;
            entry.Leases--;
            var name = NameOf(entry.Record.Name);
            name.Leases--;
            name.LastUsed = _time.GetUtcNow();
            if (entry.Leases == 0)
            {
                // A failed version is dropped with its last lease, so the next request retries the load.
                if (entry.Error is not null) RemoveIfCurrent(entry);
                else
                {
                    DropIfShadowed(entry);
                    RemoveIfIdle(entry);
                }
            }
            if (name.Leases == 0 && name.UnusedWaiters.Count > 0)
            {
                wake = [.. name.UnusedWaiters];
                name.UnusedWaiters.Clear();
            }
            if (!_disposed)
            {
                TrimHost();
                UpdateGauges(SnapshotLocked());
            }
        }
        if (wake is not null)
            foreach (var w in wake) w.TrySetResult();
    }

    public ResidencySnapshot Snapshot()
    {
        lock (_gate) return SnapshotLocked();
    }

    public AdapterRuntimeStatus Status(string name)
    {
        lock (_gate)
        {
            var tier = ResidencyTier.Stored;
            long bytes = 0;
            foreach (var entry in _versions.Values)
            {
                if (entry.Record.Name != name) continue;
                if (entry.Device is not null) tier = ResidencyTier.Device;
                else if (entry.Host is not null && tier == ResidencyTier.Stored) tier = ResidencyTier.Host;
                bytes += (entry.Device ?? entry.Host)?.Bytes ?? 0;
            }
            var state = _names.GetValueOrDefault(name);
            return new AdapterRuntimeStatus(tier, state?.Pinned ?? false, state?.LoadCount ?? 0, state?.LastUsed, state?.Leases ?? 0, bytes);
        }
    }

    /// <summary>A pinned name's versions are never evicted from the device (nor from the host while not on the device).</summary>
    public void SetPinned(string name, bool pinned)
    {
        lock (_gate)
        {
            NameOf(name).Pinned = pinned;
            if (!pinned && !_disposed)
            {
                TrimHost();
                UpdateGauges(SnapshotLocked());
            }
        }
    }

    public int ActiveSequences(string name)
    {
        lock (_gate) return _names.GetValueOrDefault(name)?.Leases ?? 0;
    }

    public Task WaitUntilUnusedAsync(string name, CancellationToken cancellationToken)
    {
        TaskCompletionSource signal;
        lock (_gate)
        {
            var state = _names.GetValueOrDefault(name);
            if (state is null || state.Leases == 0) return Task.CompletedTask;
            signal = CachedVersion.NewSignal();
            state.UnusedWaiters.Add(signal);
        }
        return signal.Task.WaitAsync(cancellationToken);
    }

    /// <summary>Drops the cached tensors of every version of <paramref name="name"/> that no lease holds (after delete or replace).</summary>
    public void Forget(string name)
    {
        var dropped = new List<(CachedVersion Entry, long Bytes)>();
        lock (_gate)
        {
            foreach (var entry in _versions.Values.Where(e => e.Record.Name == name && e.Leases == 0 && !e.Promoting).ToList())
            {
                long bytes = (entry.Device ?? entry.Host)?.Bytes ?? 0;
                DropDevice(entry);
                DropHost(entry);
                _versions.Remove(entry.Key); // a load still running sees it is no longer current and disposes its result
                dropped.Add((entry, bytes));
            }
            if (!_disposed) UpdateGauges(SnapshotLocked());
        }
        foreach (var (entry, bytes) in dropped)
            LogForgotten(_logger, entry.Record.Name, entry.Record.Version, bytes);
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            foreach (var entry in _versions.Values)
            {
                DropDevice(entry);
                DropHost(entry);
            }
            _versions.Clear();
            UpdateGauges(new ResidencySnapshot(0, 0, 0, 0, 0));
        }
        Slots.Dispose();
    }

    // ---- loading ----

    /// <summary>Under the lock: marks a load as started when the version is neither resident, loading nor failed.</summary>
    private bool BeginLoadIfAbsent(CachedVersion entry)
    {
        if (entry.Host is not null || entry.Device is not null || entry.Loading || entry.Error is not null) return false;
        entry.Loading = true;
        if (entry.HostLoaded.Task.IsCompleted) entry.HostLoaded = CachedVersion.NewSignal();
        return true;
    }

    private void LoadToHost(CachedVersion entry)
    {
        long started = Stopwatch.GetTimestamp();
        LoadedAdapter? loaded = null;
        Exception? failure = null;
        try
        {
            loaded = _loadToHost(entry.Record);
        }
        catch (Exception e)
        {
            failure = e;
        }
        double seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;

        LoadedAdapter? orphan = null;
        lock (_gate)
        {
            entry.Loading = false;
            bool current = !_disposed && _versions.TryGetValue(entry.Key, out var now) && ReferenceEquals(now, entry);
            if (failure is null && loaded!.Bytes > _options.MaxHostBytes)
            {
                failure = new AdapterValidationException(
                    $"{entry} needs {loaded.Bytes} bytes, more than the whole host adapter cache ({_options.MaxHostBytes} bytes)", "adapter_too_large", 413);
                orphan = loaded;
                loaded = null;
            }

            if (failure is not null)
            {
                entry.Error = AsValidationError(entry, failure);
                Metrics.Loads.WithLabels("error").Inc();
                if (current && entry.Leases == 0) _versions.Remove(entry.Key);
            }
            else
            {
                Metrics.Loads.WithLabels("ok").Inc();
                Metrics.LoadSeconds.Observe(seconds);
                NameOf(entry.Record.Name).LoadCount++;
                if (current)
                {
                    entry.Host = loaded;
                    Touch(entry);
                    DropShadowedDependencies(entry, deviceTier: false);
                    TrimHost();
                }
                else orphan = loaded;
            }
            if (!_disposed) UpdateGauges(SnapshotLocked());
            // Signalled under the lock, so a later load of this version (after an eviction) never inherits this signal.
            entry.HostLoaded.TrySetResult();
        }
        orphan?.Dispose();

        if (failure is not null && entry.Error is { } error)
            LogLoadFailed(_logger, entry.Record.Name, entry.Record.Version, error.Code, error.Message);
        else
            LogLoaded(_logger, entry.Record.Name, entry.Record.Version, Math.Round(seconds, 4), loaded?.Bytes ?? 0);
    }

    private static AdapterValidationException AsValidationError(CachedVersion entry, Exception failure) => failure switch
    {
        AdapterValidationException v => v,
        _ => new AdapterValidationException($"{entry} could not be loaded: {failure.Message}", "adapter_load_failed", 500),
    };

    // ---- eviction (all under the lock) ----

    /// <summary>
    /// Evicts LRU device copies until one more version (<paramref name="adding"/>, counting storage it shares with
    /// resident versions once) fits; false if that is impossible now.
    /// </summary>
    private bool MakeDeviceRoom(LoadedAdapter adding, CachedVersion incoming)
    {
        while (true)
        {
            var resident = new List<LoadedAdapter>();
            foreach (var e in _versions.Values)
            {
                if (e.Device is not null) resident.Add(e.Device);
                else if (e.Promoting && e.Host is not null) resident.Add(e.Host);
            }
            if (resident.Count + 1 <= _options.MaxDeviceAdapters && LoadedAdapter.Footprint([.. resident, adding]) <= _options.MaxDeviceBytes) return true;

            var victim = LeastRecentlyUsed(e => e.Device is not null && e.Leases == 0 && !e.Promoting && !IsPinned(e));
            if (victim is null)
            {
                LogDeviceFull(_logger, incoming.Record.Name, incoming.Record.Version, resident.Count, LoadedAdapter.Footprint(resident));
                return false;
            }
            long victimBytes = victim.Device!.Bytes;
            DropDevice(victim);
            Metrics.Evictions.Inc();
            LogEvicted(_logger, victim.Record.Name, victim.Record.Version, DeviceTier, victimBytes);
            RemoveIfIdle(victim);
        }
    }

    /// <summary>Evicts LRU host copies while the host tier is over its bounds and something may go.</summary>
    private void TrimHost()
    {
        while (true)
        {
            var hosts = Copies(deviceTier: false);
            if (hosts.Count <= _options.MaxHostAdapters && LoadedAdapter.Footprint(hosts) <= _options.MaxHostBytes) return;

            // A host copy may go when it is not being copied to the device and either a device copy exists or nobody
            // needs it soon (no lease, not pinned). Leased versions still waiting for the device stay: the tier then
            // exceeds its bound until their sequences start.
            var victim = LeastRecentlyUsed(e => e.Host is not null && !e.Promoting
                && (e.Device is not null || (e.Leases == 0 && !IsPinned(e))));
            if (victim is null) return;
            long victimBytes = victim.Host!.Bytes;
            DropHost(victim);
            Metrics.Evictions.Inc();
            LogEvicted(_logger, victim.Record.Name, victim.Record.Version, HostTier, victimBytes);
            RemoveIfIdle(victim);
        }
    }

    private CachedVersion? LeastRecentlyUsed(Func<CachedVersion, bool> evictable)
    {
        CachedVersion? best = null;
        foreach (var e in _versions.Values)
            if (evictable(e) && (best is null || e.LastUsedTick < best.LastUsedTick)) best = e;
        return best;
    }

    private void DropDevice(CachedVersion entry)
    {
        var copy = entry.Device;
        entry.Device = null;
        if (copy is not null) Slots.Free(copy);
        if (copy is not null && !ReferenceEquals(copy, entry.Host)) copy.Dispose();
    }

    private static void DropHost(CachedVersion entry)
    {
        var copy = entry.Host;
        entry.Host = null;
        if (copy is not null && !ReferenceEquals(copy, entry.Device)) copy.Dispose();
    }

    /// <summary>
    /// After <paramref name="holder"/> (a LoRA-Mixer) entered a tier: idle copies in that tier of the versions it depends on
    /// (its registered experts) that share none of its storage are dropped, so that their next use loads them as views
    /// of its stacks (<see cref="IAdapterModules.Shared"/>) rather than keeping a second copy of the same weights.
    /// Pinned and loading versions keep their copies; a leased one is dropped when its last lease goes
    /// (<see cref="DropIfShadowed"/>).
    /// </summary>
    private void DropShadowedDependencies(CachedVersion holder, bool deviceTier)
    {
        foreach (var dependency in holder.Record.Description.Dependencies)
            if (_versions.TryGetValue((dependency.Name, dependency.Version), out var entry))
                DropShadowed(entry, holder, deviceTier);
    }

    /// <summary>When <paramref name="entry"/>'s last lease went: its copies a resident version depending on it (a mixer) holds too are dropped, as above.</summary>
    private void DropIfShadowed(CachedVersion entry)
    {
        foreach (var holder in _versions.Values.Where(h => h.Record.Description.Dependencies.Any(d => d.Name == entry.Record.Name && d.Version == entry.Record.Version)).ToList())
        {
            DropShadowed(entry, holder, deviceTier: false);
            DropShadowed(entry, holder, deviceTier: true);
        }
    }

    /// <summary>Drops <paramref name="entry"/>'s copy in one tier when it is idle and <paramref name="holder"/>'s copy there holds storage it could view instead.</summary>
    private void DropShadowed(CachedVersion entry, CachedVersion holder, bool deviceTier)
    {
        var holding = deviceTier ? holder.Device : holder.Host;
        if (holding is null || holding.Modules.Shared.Count == 0) return;
        if (entry.Leases > 0 || entry.Promoting || entry.Loading || IsPinned(entry)) return;
        var copy = deviceTier ? entry.Device : entry.Host;
        if (copy is null || ReferenceEquals(copy, holding) || copy.Modules.Shared.Intersect(holding.Modules.Shared).Any()) return;
        // Only when the holder has some of its modules: an expert of modules the mixer does not route would reload for nothing.
        if (!entry.Record.Description.ModuleSummaries.Any(m => holding.Modules.Targets(m.Layer, m.Projection))) return;
        long bytes = copy.Bytes;
        DropDevice(entry);
        if (!deviceTier) DropHost(entry);
        RemoveIfIdle(entry);
        LogShadowed(_logger, entry.Record.Name, entry.Record.Version, deviceTier ? DeviceTier : HostTier, bytes, holder.Record.Name);
    }

    /// <summary>Forgets a version that holds nothing and that nobody holds (keeps the bookkeeping bounded).</summary>
    private void RemoveIfIdle(CachedVersion entry)
    {
        if (entry.Leases == 0 && entry.Host is null && entry.Device is null && !entry.Loading && !entry.Promoting)
            RemoveIfCurrent(entry);
    }

    private void RemoveIfCurrent(CachedVersion entry)
    {
        if (_versions.TryGetValue(entry.Key, out var now) && ReferenceEquals(now, entry)) _versions.Remove(entry.Key);
    }

    // ---- bookkeeping ----

    private void Touch(CachedVersion entry)
    {
        entry.LastUsedTick = ++_tick;
        NameOf(entry.Record.Name).LastUsed = _time.GetUtcNow();
    }

    private bool IsPinned(CachedVersion entry) => _names.GetValueOrDefault(entry.Record.Name)?.Pinned ?? false;

    private NameState NameOf(string name)
    {
        if (!_names.TryGetValue(name, out var state)) _names[name] = state = new NameState();
        return state;
    }

    private bool IsOnDevice(LoadedAdapter adapter) => adapter.Device.type == _device.type && adapter.Device.index == _device.index;

    /// <summary>Each tier's versions and bytes (storage shared by several versions counted once).</summary>
    private ResidencySnapshot SnapshotLocked()
    {
        var device = Copies(deviceTier: true);
        var host = Copies(deviceTier: false);
        return new ResidencySnapshot(device.Count, LoadedAdapter.Footprint(device), host.Count, LoadedAdapter.Footprint(host), _versions.Count);
    }

    /// <summary>Every version's copy in one tier.</summary>
    private List<LoadedAdapter> Copies(bool deviceTier) =>
        [.. _versions.Values.Select(e => deviceTier ? e.Device : e.Host).OfType<LoadedAdapter>()];

    private void UpdateGauges(ResidencySnapshot s)
    {
        Metrics.Resident.WithLabels(DeviceTier).Set(s.DeviceAdapters);
        Metrics.Resident.WithLabels(HostTier).Set(s.HostAdapters);
        Metrics.ResidentBytes.WithLabels(DeviceTier).Set(s.DeviceBytes);
        Metrics.ResidentBytes.WithLabels(HostTier).Set(s.HostBytes);
    }

    /// <summary>Per adapter name: pin flag, leases over all its versions, load count, last use.</summary>
    private sealed class NameState
    {
        public bool Pinned;
        public int Leases;
        public long LoadCount;
        public DateTimeOffset? LastUsed;
        public List<TaskCompletionSource> UnusedWaiters { get; } = [];
    }

    // ---- structured logs ----

    [LoggerMessage(EventId = 4101, Level = LogLevel.Information,
        Message = "Adapter {Adapter} v{Version} loaded into the host tier in {Seconds} s ({Bytes} bytes)")]
    private static partial void LogLoaded(ILogger logger, string adapter, int version, double seconds, long bytes);

    [LoggerMessage(EventId = 4102, Level = LogLevel.Warning,
        Message = "Adapter {Adapter} v{Version} failed to load ({Code}): {Reason}")]
    private static partial void LogLoadFailed(ILogger logger, string adapter, int version, string code, string reason);

    [LoggerMessage(EventId = 4103, Level = LogLevel.Information,
        Message = "Adapter {Adapter} v{Version} moved to the device tier ({Bytes} bytes; device tier now {DeviceAdapters} adapters, {DeviceBytes} bytes)")]
    private static partial void LogPromoted(ILogger logger, string adapter, int version, long bytes, int deviceAdapters, long deviceBytes);

    [LoggerMessage(EventId = 4104, Level = LogLevel.Information,
        Message = "Adapter {Adapter} v{Version} evicted from the {Tier} tier ({Bytes} bytes, least recently used)")]
    private static partial void LogEvicted(ILogger logger, string adapter, int version, string tier, long bytes);

    [LoggerMessage(EventId = 4105, Level = LogLevel.Debug,
        Message = "Adapter {Adapter} v{Version} waits for a device slot: {DeviceAdapters} adapters ({DeviceBytes} bytes) resident, all leased or pinned")]
    private static partial void LogDeviceFull(ILogger logger, string adapter, int version, int deviceAdapters, long deviceBytes);

    [LoggerMessage(EventId = 4107, Level = LogLevel.Information,
        Message = "Adapter {Adapter} v{Version} dropped from the {Tier} tier ({Bytes} bytes): {Holder} holds the same weights, its next use is served from there")]
    private static partial void LogShadowed(ILogger logger, string adapter, int version, string tier, long bytes, string holder);

    [LoggerMessage(EventId = 4108, Level = LogLevel.Information,
        Message = "On {Device}, S'MoRE and OMoE steps of few rows run {MixtureForm}")]
    private static partial void LogMixtureForm(ILogger logger, string device, string mixtureForm);

    [LoggerMessage(EventId = 4106, Level = LogLevel.Information,
        Message = "Adapter {Adapter} v{Version} forgotten ({Bytes} bytes released)")]
    private static partial void LogForgotten(ILogger logger, string adapter, int version, long bytes);
}
