using System.Globalization;
using AdapterServe.Modeling;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace AdapterServe.Adapters.Store;

/// <summary>The outcome of a commit: the new record, and the record it replaced (null for a new name).</summary>
public sealed record AdapterCommit(AdapterRecord Record, AdapterRecord? Replaced);

/// <summary>
/// The persistent adapter store: <c>&lt;data&gt;/adapters/&lt;name&gt;/v&lt;version&gt;/</c> holds the PEFT files and a
/// manifest written last. Every write is staged in <c>&lt;data&gt;/tmp/&lt;guid&gt;/</c>, fully validated against the
/// base model, then renamed into place, so readers (and a restart) only ever see whole versions. On start it
/// removes stale staging folders and publishes the newest version of each stored adapter to the
/// <see cref="AdapterRegistry"/>, reading configs and safetensors headers only (no weights).
/// </summary>
public sealed class AdapterStore
{
    private const string VersionPrefix = "v";
    private readonly AdapterStoreOptions _options;
    private readonly ModelConfig _baseModel;
    private readonly AdapterKinds _kinds;
    private readonly IAdapterResidency _residency;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly SemaphoreSlim _writes = new(1, 1);
    private readonly Dictionary<(string Name, int Version), DateTimeOffset> _retired = [];

    /// <param name="kinds">The adapter kinds accepted (default: <see cref="AdapterKinds.BuiltIn"/>).</param>
    public AdapterStore(AdapterStoreOptions options, ModelConfig baseModel, IAdapterResidency residency, AdapterRegistry registry,
        ILogger<AdapterStore>? logger = null, TimeProvider? time = null, AdapterKinds? kinds = null)
    {
        _kinds = kinds ?? AdapterKinds.BuiltIn;
        if (options.Problems() is { Count: > 0 } problems) throw new ArgumentException(string.Join("; ", problems), nameof(options));
        _options = options;
        _baseModel = baseModel;
        _residency = residency;
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        _time = time ?? TimeProvider.System;
        Registry = registry;
        DataDirectory = Path.GetFullPath(options.DataDirectory);
        AdaptersDirectory = Path.Combine(DataDirectory, "adapters");
        TmpDirectory = Path.Combine(DataDirectory, "tmp");
        Open();
    }

    public AdapterRegistry Registry { get; }
    public string DataDirectory { get; }
    public string AdaptersDirectory { get; }
    public string TmpDirectory { get; }
    public ArchiveLimits ArchiveLimits => new(_options.MaxArchiveEntries, _options.MaxUncompressedBytes);
    public long MaxUploadBytes => _options.MaxUploadBytes;

    /// <summary>A fresh staging folder for one incoming adapter; dispose it when done (commit moves what it keeps).</summary>
    public AdapterStaging BeginStaging() => new(TmpDirectory);

    /// <summary>Refuses early (409) a new adapter whose name is taken, before its files are received.</summary>
    public void EnsureCanCreate(string name, bool replace)
    {
        AdapterName.Validate(name);
        if (!replace && Registry.TryResolve(name, out var existing)) throw Exists(existing);
    }

    /// <summary>
    /// Validates the staged PEFT files against the base model and makes them version 1 of <paramref name="name"/>,
    /// or, with <paramref name="replace"/>, the next version of an existing adapter (new requests get it; running
    /// ones keep theirs; the old version's files go once nothing uses them).
    /// </summary>
    public async Task<AdapterCommit> CommitAsync(string name, AdapterStaging staging, bool replace, string source, CancellationToken cancellationToken = default)
    {
        EnsureCanCreate(name, replace);
        string versionStaging = Path.Combine(staging.Root, "version");
        var (description, files) = await Task.Run(() => Prepare(staging.PeftDirectory, versionStaging), cancellationToken);

        await _writes.WaitAsync(cancellationToken);
        AdapterCommit commit;
        try
        {
            Registry.TryResolve(name, out var existing);
            if (existing is not null && !replace) throw Exists(existing);

            string nameDirectory = Path.Combine(AdaptersDirectory, name);
            int version = Math.Max(existing?.Version ?? 0, StoredVersions(nameDirectory).DefaultIfEmpty(0).Max()) + 1;
            string finalDirectory = Path.Combine(nameDirectory, VersionPrefix + version.ToString(CultureInfo.InvariantCulture));
            var now = _time.GetUtcNow();
            var record = new AdapterRecord(name, version, finalDirectory, description, ContentHash.Combine(files), source, existing?.CreatedAt ?? now, now);
            AdapterManifest.For(record, files, _baseModel).Write(versionStaging);

            bool createdNameDirectory = !Directory.Exists(nameDirectory);
            Directory.CreateDirectory(nameDirectory);
            try { Directory.Move(versionStaging, finalDirectory); }
            catch
            {
                if (createdNameDirectory) TryDelete(nameDirectory);
                throw;
            }
            Registry.Publish(record);
            if (existing is not null) _retired[(name, existing.Version)] = now;
            commit = new AdapterCommit(record, existing);
        }
        finally { _writes.Release(); }

        _logger.LogInformation("Adapter {Name} v{Version} stored ({Kind}, {Modules} modules, {Bytes} bytes, {Hash}) from {Source}",
            name, commit.Record.Version, description.Kind, description.ModuleSummaries.Count, description.WeightBytes, commit.Record.ContentHash, source);
        if (commit.Replaced is not null)
        {
            _residency.Forget(name);
            CollectRetiredVersions();
        }
        return commit;
    }

    /// <summary>Registers a folder (or archive) on this machine, vLLM's <c>load_lora_adapter</c>: the files are copied in.</summary>
    public async Task<AdapterCommit> RegisterPathAsync(string name, string path, bool replace, CancellationToken cancellationToken = default)
    {
        EnsureCanCreate(name, replace);
        if (string.IsNullOrWhiteSpace(path)) throw new AdapterValidationException("lora_path is empty", "adapter_path_not_found");
        string full = Path.GetFullPath(path);
        using var staging = BeginStaging();
        await Task.Run(() =>
        {
            if (Directory.Exists(full)) staging.CopyFrom(full);
            else if (File.Exists(full)) staging.UseArchive(full, ArchiveLimits);
            else throw new AdapterValidationException($"lora_path '{path}' does not exist on the server", "adapter_path_not_found");
        }, cancellationToken);
        return await CommitAsync(name, staging, replace, "path:" + full, cancellationToken);
    }

    /// <summary>
    /// Deletes an adapter and all its versions. In use by a running sequence: 409 <c>adapter_in_use</c>, or with
    /// <paramref name="wait"/> it is first withdrawn (no new requests get it), then removed once the running ones finish.
    /// </summary>
    public async Task<AdapterRecord> DeleteAsync(string name, bool wait, CancellationToken cancellationToken = default)
    {
        await _writes.WaitAsync(cancellationToken);
        bool held = true, deleted = false;
        try
        {
            if (!Registry.TryResolve(name, out var record)) throw AdapterStoreException.NotFound(name);
            int active = _residency.ActiveSequences(name);
            if (active > 0)
            {
                if (!wait)
                    throw new AdapterStoreException($"adapter '{name}' is used by {active} running sequence(s); retry later or pass ?wait=true", "adapter_in_use", 409, "name");
                Registry.Remove(name, record);
                _writes.Release();
                held = false;
                _logger.LogInformation("Adapter {Name} withdrawn; waiting for {Active} running sequence(s) before deleting it", name, active);
                try { await _residency.WaitUntilUnusedAsync(name, cancellationToken); }
                catch (OperationCanceledException)
                {
                    Registry.PublishIfAbsent(record);
                    throw;
                }
                await _writes.WaitAsync(CancellationToken.None);
                held = true;
            }
            else Registry.Remove(name, record);

            RemoveVersions(name, upTo: record.Version);
            _logger.LogInformation("Adapter {Name} deleted (v{Version})", name, record.Version);
            deleted = true;
            return record;
        }
        finally
        {
            if (held) _writes.Release();
            if (deleted) _residency.Forget(name);
        }
    }

    /// <summary>Deletes replaced versions that nothing uses any more (the grace period passed); returns how many.</summary>
    public int CollectRetiredVersions()
    {
        _writes.Wait();
        try
        {
            var now = _time.GetUtcNow();
            var grace = TimeSpan.FromSeconds(_options.RetiredVersionGraceSeconds);
            int removed = 0;
            foreach (var ((name, version), since) in _retired.ToList())
            {
                if (now - since < grace || _residency.ActiveSequences(name) > 0) continue;
                RemoveVersionDirectory(name, version);
                _retired.Remove((name, version));
                removed++;
            }
            return removed;
        }
        finally { _writes.Release(); }
    }

    /// <summary>Versions of <paramref name="name"/> still on disk (current and retired), ascending.</summary>
    public IReadOnlyList<int> VersionsOnDisk(string name) =>
        AdapterName.IsValid(name) ? StoredVersions(Path.Combine(AdaptersDirectory, name)).Order().ToList() : [];

    private (AdapterDescription, IReadOnlyList<StoredFile>) Prepare(string peftDirectory, string versionStaging)
    {
        var description = AdapterValidator.Validate(peftDirectory, _baseModel, _kinds, new AdapterValidationOptions(ScanWeights: true, _options.KasaTruncation));
        Directory.CreateDirectory(versionStaging);
        string[] names = [AdapterValidator.ConfigFileName, AdapterValidator.WeightsFileName];
        foreach (var file in names)
        {
            string target = Path.Combine(versionStaging, file);
            File.Move(Path.Combine(peftDirectory, file), target);
            using var stream = new FileStream(target, FileMode.Open, FileAccess.ReadWrite);
            stream.Flush(flushToDisk: true);
        }
        var (_, files) = ContentHash.Compute(versionStaging, names);
        return (description, files);
    }

    private void Open()
    {
        Directory.CreateDirectory(AdaptersDirectory);
        Directory.CreateDirectory(TmpDirectory);
        foreach (var stale in Directory.EnumerateFileSystemEntries(TmpDirectory))
        {
            _logger.LogInformation("Removing stale staging entry {Path}", stale);
            if (Directory.Exists(stale)) TryDelete(stale); else File.Delete(stale);
        }

        foreach (var nameDirectory in Directory.EnumerateDirectories(AdaptersDirectory).Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileName(nameDirectory);
            if (!AdapterName.IsValid(name)) { _logger.LogWarning("Ignoring {Path}: not a valid adapter name", nameDirectory); continue; }
            var versions = StoredVersions(nameDirectory).OrderDescending().ToList();
            foreach (int uncommitted in versions.Where(v => !File.Exists(Path.Combine(VersionDirectory(name, v), AdapterManifest.FileName))).ToList())
            {
                _logger.LogWarning("Removing uncommitted {Path} (no manifest)", VersionDirectory(name, uncommitted));
                TryDelete(VersionDirectory(name, uncommitted));
                versions.Remove(uncommitted);
            }
            if (versions.Count == 0)
            {
                if (!Directory.EnumerateFileSystemEntries(nameDirectory).Any()) TryDelete(nameDirectory);
                continue;
            }

            int current = versions[0];
            string directory = VersionDirectory(name, current);
            try
            {
                var manifest = AdapterManifest.Read(directory);
                if (manifest.Name != name || manifest.Version != current)
                    throw new InvalidDataException($"manifest says '{manifest.Name}' v{manifest.Version}");
                var description = AdapterValidator.Validate(directory, _baseModel, _kinds, new AdapterValidationOptions(ScanWeights: false, _options.KasaTruncation));
                Registry.Publish(new AdapterRecord(name, current, directory, description, manifest.ContentHash, manifest.Source, manifest.CreatedAt, manifest.UpdatedAt));
            }
            catch (Exception e) when (e is AdapterValidationException or InvalidDataException or IOException)
            {
                _logger.LogWarning("Adapter {Name} v{Version} in {Path} is not served: {Reason}", name, current, directory, e.Message);
                continue;
            }
            foreach (int old in versions.Skip(1)) TryDelete(VersionDirectory(name, old));
        }
        _logger.LogInformation("Adapter store {Path}: {Count} adapter(s)", DataDirectory, Registry.Count);
    }

    private void RemoveVersions(string name, int upTo)
    {
        string nameDirectory = Path.Combine(AdaptersDirectory, name);
        foreach (int version in StoredVersions(nameDirectory).Where(v => v <= upTo))
        {
            RemoveVersionDirectory(name, version);
            _retired.Remove((name, version));
        }
        if (Directory.Exists(nameDirectory) && !Directory.EnumerateFileSystemEntries(nameDirectory).Any()) TryDelete(nameDirectory);
    }

    /// <summary>Renames the version folder out of <c>adapters/</c> first (one atomic step), then deletes it.</summary>
    private void RemoveVersionDirectory(string name, int version)
    {
        string directory = VersionDirectory(name, version);
        if (!Directory.Exists(directory)) return;
        string trash = Path.Combine(TmpDirectory, "deleted-" + Guid.NewGuid().ToString("N"));
        Directory.Move(directory, trash);
        TryDelete(trash);
        string nameDirectory = Path.Combine(AdaptersDirectory, name);
        if (!Registry.TryResolve(name, out _) && Directory.Exists(nameDirectory) && !Directory.EnumerateFileSystemEntries(nameDirectory).Any())
            TryDelete(nameDirectory);
    }

    private string VersionDirectory(string name, int version) =>
        Path.Combine(AdaptersDirectory, name, VersionPrefix + version.ToString(CultureInfo.InvariantCulture));

    private static IEnumerable<int> StoredVersions(string nameDirectory)
    {
        if (!Directory.Exists(nameDirectory)) yield break;
        foreach (var directory in Directory.EnumerateDirectories(nameDirectory))
        {
            string leaf = Path.GetFileName(directory);
            if (leaf.StartsWith(VersionPrefix, StringComparison.Ordinal) && leaf.Length > 1 && leaf.Length < 10 && leaf[1] != '0'
                && int.TryParse(leaf.AsSpan(1), NumberStyles.None, CultureInfo.InvariantCulture, out int version))
                yield return version;
        }
    }

    private void TryDelete(string directory)
    {
        try { Directory.Delete(directory, recursive: true); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _logger.LogWarning("Could not delete {Path}: {Reason}", directory, e.Message);
        }
    }

    private static AdapterStoreException Exists(AdapterRecord existing) =>
        new($"adapter '{existing.Name}' already exists (v{existing.Version}); pass replace=true (load_inplace for load_lora_adapter) to store a new version",
            "adapter_exists", 409, "name");
}
