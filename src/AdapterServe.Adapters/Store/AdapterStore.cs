using System.Globalization;
using AdapterServe.Modeling;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace AdapterServe.Adapters.Store;

/// <summary>The outcome of a commit: the new record, and the record it replaced (null for a new name).</summary>
public sealed record AdapterCommit(AdapterRecord Record, AdapterRecord? Replaced);

/// <summary>
/// The persistent adapter store of one base model: <c>&lt;store&gt;/adapters/&lt;name&gt;/v&lt;version&gt;/</c> holds the
/// PEFT files and a manifest written last. Every write is staged in <c>&lt;store&gt;/tmp/&lt;guid&gt;/</c>, fully validated
/// against the base model, flushed to the disk (files, then the folder), given its manifest, and only then renamed into
/// place (the one atomic step; the parent folder is flushed after it), so readers and a restart after a crash at any point
/// see the previous version or the whole new one, never part of one. A delete or unload first renames the manifests
/// away (durable withdrawal), so a crash before the files are gone cannot bring the adapter back. On start it removes
/// staging leftovers and versions without a manifest, and publishes the newest version of each stored adapter to the
/// <see cref="AdapterRegistry"/>, reading configs and safetensors headers only (no weights).
/// </summary>
public sealed class AdapterStore
{
    private const string VersionPrefix = "v";
    private const string WithdrawnManifest = "manifest.withdrawn";
    private readonly AdapterStoreOptions _options;
    private readonly string? _baseModelId;
    private readonly IReadOnlyList<string> _allowedPaths;
    private readonly ModelConfig _baseModel;
    private readonly AdapterKinds _kinds;
    private readonly IAdapterResidency _residency;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly SemaphoreSlim _writes = new(1, 1);
    private readonly Dictionary<(string Name, int Version), DateTimeOffset> _retired = [];

    /// <param name="kinds">The adapter kinds accepted (default: <see cref="AdapterKinds.BuiltIn"/>).</param>
    /// <param name="baseModelId">The served id of the base model: names the per-base store folder, and no adapter may take it.</param>
    public AdapterStore(AdapterStoreOptions options, ModelConfig baseModel, IAdapterResidency residency, AdapterRegistry registry,
        ILogger<AdapterStore>? logger = null, TimeProvider? time = null, string? baseModelId = null, AdapterKinds? kinds = null)
    {
        _kinds = kinds ?? AdapterKinds.BuiltIn;
        if (options.Problems() is { Count: > 0 } problems) throw new ArgumentException(string.Join("; ", problems), nameof(options));
        _options = options;
        _baseModel = baseModel;
        _baseModelId = baseModelId;
        _residency = residency;
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        _time = time ?? TimeProvider.System;
        Registry = registry;
        WritePause = new StoreWritePause(_logger);
        BaseModelIdentity = Store.BaseModelIdentity.Of(baseModelId ?? "base", baseModel);
        DataDirectory = options.StoreDirectory(BaseModelIdentity);
        AdaptersDirectory = Path.Combine(DataDirectory, "adapters");
        TmpDirectory = Path.Combine(DataDirectory, "tmp");
        _allowedPaths = options.EffectiveAllowedAdapterPaths().Select(HostPath.Resolve).ToList();
        Open();
    }

    public AdapterRegistry Registry { get; }
    /// <summary>The folder of this base model's store (absolute).</summary>
    public string DataDirectory { get; }
    /// <summary>The base model's folder name under <c>&lt;data root&gt;/models/</c> (see <see cref="Store.BaseModelIdentity"/>).</summary>
    public string BaseModelIdentity { get; }
    /// <summary>TEST-ONLY pause points of the write path (see <see cref="StoreWritePause"/>); inert unless its variable is set.</summary>
    public StoreWritePause WritePause { get; }
    public string AdaptersDirectory { get; }
    public string TmpDirectory { get; }
    public ArchiveLimits ArchiveLimits => new(_options.MaxArchiveEntries, _options.MaxUncompressedBytes);
    public long MaxUploadBytes => _options.MaxUploadBytes;

    /// <summary>A fresh staging folder for one incoming adapter; dispose it when done (commit moves what it keeps).</summary>
    public AdapterStaging BeginStaging() => new(TmpDirectory, _kinds);

    /// <summary>Refuses early (409) a new adapter whose name is taken, before its files are received.</summary>
    public void EnsureCanCreate(string name, bool replace)
    {
        AdapterName.Validate(name);
        if (IsBaseModelName(name))
            throw new AdapterValidationException($"adapter name '{name}' is the base model's id; an adapter needs a name of its own", "invalid_adapter_name");
        if (!replace && Registry.TryResolve(name, out var existing)) throw Exists(existing);
    }

    private bool IsBaseModelName(string name) => _baseModelId is not null && string.Equals(name, _baseModelId, StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Validates the staged PEFT files against the base model and makes them version 1 of <paramref name="name"/>,
    /// or, with <paramref name="replace"/>, the next version of an existing adapter (new requests get it; running
    /// ones keep theirs; the old version's files go once nothing uses them).
    /// </summary>
    public Task<AdapterCommit> CommitAsync(string name, AdapterStaging staging, bool replace, string source, CancellationToken cancellationToken = default) =>
        CommitAsync(name, staging, replace, source, filesFromServerPath: false, cancellationToken);

    private async Task<AdapterCommit> CommitAsync(string name, AdapterStaging staging, bool replace, string source, bool filesFromServerPath, CancellationToken cancellationToken)
    {
        EnsureCanCreate(name, replace);
        string versionStaging = Path.Combine(staging.Root, "version");
        WritePause.At("received");
        AdapterDescription description;
        IReadOnlyList<StoredFile> files;
        try { (description, files) = await Task.Run(() => Prepare(staging.PeftDirectory, versionStaging), cancellationToken); }
        catch (AdapterValidationException e) when (filesFromServerPath) { throw Undisclosed(e, name); }
        WritePause.At("validated");

        await _writes.WaitAsync(cancellationToken);
        AdapterCommit commit;
        IReadOnlyList<AdapterRecord> refreshed;
        try
        {
            Registry.TryResolve(name, out var existing);
            if (existing is not null && !replace) throw Exists(existing);

            string nameDirectory = Path.Combine(AdaptersDirectory, name);
            int version = Math.Max(existing?.Version ?? 0, StoredVersions(nameDirectory).DefaultIfEmpty(0).Max()) + 1;
            string finalDirectory = Path.Combine(nameDirectory, VersionPrefix + version.ToString(CultureInfo.InvariantCulture));
            var now = _time.GetUtcNow();
            var record = new AdapterRecord(name, version, finalDirectory, description, ContentHash.Combine(files), source, existing?.CreatedAt ?? now, now);
            EnsureDependenciesCurrent(record);
            var dependents = existing is null ? [] : RevalidateDependents(record);
            AdapterManifest.For(record, files, _baseModel).Write(versionStaging);
            DurableFiles.FlushDirectory(versionStaging);
            WritePause.At("manifest");

            bool createdNameDirectory = !Directory.Exists(nameDirectory);
            Directory.CreateDirectory(nameDirectory);
            if (createdNameDirectory) DurableFiles.FlushDirectory(AdaptersDirectory);
            try { Directory.Move(versionStaging, finalDirectory); }
            catch
            {
                if (createdNameDirectory) TryDelete(nameDirectory);
                throw;
            }
            DurableFiles.FlushDirectory(nameDirectory);
            WritePause.At("renamed");
            Registry.Publish(record);
            foreach (var dependent in dependents) Registry.Publish(dependent);
            if (existing is not null) _retired[(name, existing.Version)] = now;
            commit = new AdapterCommit(record, existing);
            refreshed = dependents;
        }
        finally { _writes.Release(); }

        _logger.LogInformation("Adapter {Name} v{Version} stored ({Kind}, {Modules} modules, {Bytes} bytes, {Hash}) from {Source}",
            name, commit.Record.Version, description.Kind, description.ModuleSummaries.Count, description.WeightBytes, commit.Record.ContentHash, source);
        if (commit.Replaced is not null)
        {
            _residency.Forget(name);
            // A mixture over the replaced adapter: new requests load it again with the new expert; running ones keep theirs.
            foreach (var dependent in refreshed) _residency.Forget(dependent.Name);
            CollectRetiredVersions();
        }
        return commit;
    }

    /// <summary>
    /// Registers a folder (or archive) on this machine, vLLM's <c>load_lora_adapter</c>: the files are copied in. The path
    /// is resolved (every symbolic link followed) and, with <see cref="AdapterStoreOptions.AllowedAdapterPaths"/>, must lie
    /// under one of those folders (403). Only regular files are read; a PEFT file that is a link is followed only to a
    /// file inside the adapter folder or an allowed folder. The reading runs on a thread of its own, bounded by
    /// <see cref="AdapterStoreOptions.PathReadTimeoutSeconds"/> and given up when the request is cancelled. Errors about
    /// the files' contents do not quote them (the caller may not be able to read them): the details go to the log.
    /// </summary>
    public async Task<AdapterCommit> RegisterPathAsync(string name, string path, bool replace, CancellationToken cancellationToken = default)
    {
        EnsureCanCreate(name, replace);
        if (string.IsNullOrWhiteSpace(path)) throw PathError("lora_path is empty", "adapter_path_not_found");
        if (path.Any(char.IsControl)) throw PathError("lora_path contains a control character (such as NUL); give a plain folder path", "invalid_lora_path");
        string full;
        try { full = HostPath.Resolve(path); }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException or NotSupportedException)
        {
            throw PathError($"lora_path '{path}' cannot be resolved on the server", "adapter_path_not_found");
        }
        if (_allowedPaths.Count > 0 && !_allowedPaths.Any(root => HostPath.IsUnder(full, root)))
            throw new AdapterStoreException(
                $"lora_path '{path}' is outside the folders path registration may read; the server allows only what --allowed-adapter-paths (Server:AllowedAdapterPaths) lists",
                "adapter_path_not_allowed", 403, "lora_path");

        var kind = HostPath.KindOf(full);
        if (kind == HostFileKind.Missing) throw PathError($"lora_path '{path}' does not exist on the server", "adapter_path_not_found");
        if (kind is not (HostFileKind.Directory or HostFileKind.RegularFile))
            throw PathError($"lora_path '{path}' is not a folder or a regular file (FIFOs, devices and sockets are not read)", "adapter_path_not_regular");

        using var staging = BeginStaging();
        var limits = ArchiveLimits;
        IReadOnlyList<string> linkRoots = kind == HostFileKind.Directory ? [full, .. _allowedPaths] : [];
        await ReadOffThePoolAsync(token =>
        {
            try
            {
                if (kind == HostFileKind.Directory) staging.CopyFrom(full, linkRoots, token);
                else
                {
                    try { staging.UseArchive(full, limits); }
                    catch (AdapterValidationException e) { throw Undisclosed(e, name); }
                }
            }
            catch (Exception e) when (e is UnauthorizedAccessException or IOException)
            {
                _logger.LogWarning("Path registration of {Name} could not read {Path}: {Reason}", name, full, e.Message);
                throw PathError($"the files at lora_path '{path}' cannot be read by the server", "adapter_path_unreadable");
            }
        }, cancellationToken);
        return await CommitAsync(name, staging, replace, "path:" + full, filesFromServerPath: true, cancellationToken);
    }

    /// <summary>Runs file reads of a path registration on a dedicated thread (never a thread-pool one), bounded in time and cancellable.</summary>
    private async Task ReadOffThePoolAsync(Action<CancellationToken> read, CancellationToken cancellationToken)
    {
        var timeout = TimeSpan.FromSeconds(_options.PathReadTimeoutSeconds);
        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        bounded.CancelAfter(timeout);
        var token = bounded.Token;
        var reading = Task.Factory.StartNew(() => read(token), token, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        try { await reading.WaitAsync(token); }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            _ = reading.ContinueWith(t => _ = t.Exception, TaskScheduler.Default);   // a read stuck in the kernel ends on its own, unobserved
            throw PathError($"reading lora_path took longer than {timeout.TotalSeconds:0.#} s (Adapters:PathReadTimeoutSeconds)", "adapter_path_timeout");
        }
    }

    /// <summary>The same error without its message (which may quote the files' bytes); the message is logged under an id.</summary>
    private AdapterValidationException Undisclosed(AdapterValidationException e, string name)
    {
        string id = Guid.NewGuid().ToString("N")[..12];
        _logger.LogWarning("Path registration of {Name} refused ({Code}, error id {ErrorId}): {Reason}", name, e.Code, id, e.Message);
        return new AdapterValidationException(
            $"the adapter files at lora_path are not valid ({e.Code}); the details are in the server log under error id {id}", e.Code, e.StatusCode);
    }

    private static AdapterValidationException PathError(string message, string code) => new(message, code);

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
            EnsureNotReferenced(name, "deleted");
            int active = _residency.ActiveSequences(name);
            if (active > 0)
            {
                if (!wait)
                    throw new AdapterStoreException($"adapter '{name}' is used by {active} running sequence(s); retry later or pass ?wait=true", "adapter_in_use", 409, "name");
                Withdraw(record);
                _writes.Release();
                held = false;
                _logger.LogInformation("Adapter {Name} withdrawn; waiting for {Active} running sequence(s) before deleting it", name, active);
                try { await _residency.WaitUntilUnusedAsync(name, cancellationToken); }
                catch (OperationCanceledException)
                {
                    await _writes.WaitAsync(CancellationToken.None);
                    try { Reinstate(record); }
                    finally { _writes.Release(); }
                    throw;
                }
                await _writes.WaitAsync(CancellationToken.None);
                held = true;
            }
            else Withdraw(record);

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

    /// <summary>
    /// vLLM's <c>unload_lora_adapter</c>: the adapter is withdrawn at once (new requests get 404, a restart does not bring
    /// it back) and running sequences finish on it; its files go now when nothing uses it, else once the running ones end
    /// (<see cref="CollectRetiredVersions"/>).
    /// </summary>
    public async Task<AdapterRecord> UnloadAsync(string name, CancellationToken cancellationToken = default)
    {
        await _writes.WaitAsync(cancellationToken);
        bool removed = false;
        try
        {
            if (!Registry.TryResolve(name, out var record)) throw AdapterStoreException.NotFound(name);
            EnsureNotReferenced(name, "unloaded");
            Withdraw(record);
            int active = _residency.ActiveSequences(name);
            if (active == 0)
            {
                RemoveVersions(name, upTo: record.Version);
                removed = true;
                _logger.LogInformation("Adapter {Name} unloaded and deleted (v{Version})", name, record.Version);
            }
            else
            {
                var now = _time.GetUtcNow() - TimeSpan.FromSeconds(_options.RetiredVersionGraceSeconds);
                foreach (int version in StoredVersions(Path.Combine(AdaptersDirectory, name)).Where(v => v <= record.Version))
                    _retired[(name, version)] = now;
                _logger.LogInformation("Adapter {Name} unloaded (v{Version}); its files go once {Active} running sequence(s) finish", name, record.Version, active);
            }
            return record;
        }
        finally
        {
            _writes.Release();
            if (removed) _residency.Forget(name);
        }
    }

    /// <summary>
    /// Takes <paramref name="record"/> out of the registry and renames the manifest of every version up to it away, so the
    /// withdrawal survives a crash (a version without a manifest is removed at start). Holds the write lock.
    /// </summary>
    private void Withdraw(AdapterRecord record)
    {
        Registry.Remove(record.Name, record);
        string nameDirectory = Path.Combine(AdaptersDirectory, record.Name);
        foreach (int version in StoredVersions(nameDirectory).Where(v => v <= record.Version))
        {
            string directory = VersionDirectory(record.Name, version);
            string manifest = Path.Combine(directory, AdapterManifest.FileName);
            if (!File.Exists(manifest)) continue;
            File.Move(manifest, Path.Combine(directory, WithdrawnManifest), overwrite: true);
            DurableFiles.FlushDirectory(directory);
        }
        WritePause.At("withdrawn");
    }

    /// <summary>Undoes <see cref="Withdraw"/> (a delete that was cancelled while waiting). Holds the write lock.</summary>
    private void Reinstate(AdapterRecord record)
    {
        foreach (int version in StoredVersions(Path.Combine(AdaptersDirectory, record.Name)).Where(v => v <= record.Version))
        {
            string directory = VersionDirectory(record.Name, version);
            string withdrawn = Path.Combine(directory, WithdrawnManifest);
            if (!File.Exists(withdrawn)) continue;
            File.Move(withdrawn, Path.Combine(directory, AdapterManifest.FileName), overwrite: false);
            DurableFiles.FlushDirectory(directory);
        }
        Registry.PublishIfAbsent(record);
    }

    /// <summary>Deletes replaced or unloaded versions that nothing uses any more (the grace period passed); returns how many.</summary>
    public int CollectRetiredVersions()
    {
        _writes.Wait();
        var forget = new HashSet<string>(StringComparer.Ordinal);
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
                forget.Add(name);
                removed++;
            }
            return removed;
        }
        finally
        {
            _writes.Release();
            foreach (var name in forget)
                if (!Registry.TryResolve(name, out _)) _residency.Forget(name);
        }
    }

    /// <summary>Versions of <paramref name="name"/> still on disk (current and retired), ascending.</summary>
    public IReadOnlyList<int> VersionsOnDisk(string name) =>
        AdapterName.IsValid(name) ? StoredVersions(Path.Combine(AdaptersDirectory, name)).Order().ToList() : [];

    /// <summary>Registered adapters that use <paramref name="name"/> (a mixture's referenced experts), by name.</summary>
    public IReadOnlyList<AdapterRecord> Dependents(string name) =>
        Registry.List().Where(r => r.Name != name && r.Description.DependsOn.Contains(name, StringComparer.Ordinal)).ToList();

    /// <summary>409 <c>adapter_referenced</c> naming the adapters that use <paramref name="name"/>.</summary>
    private void EnsureNotReferenced(string name, string verb)
    {
        var users = Dependents(name);
        if (users.Count > 0)
            throw new AdapterStoreException(
                $"adapter '{name}' cannot be {verb}: it is an expert of {string.Join(", ", users.Select(u => $"'{u.Name}'"))}; delete or replace {(users.Count == 1 ? "that adapter" : "those adapters")} first",
                "adapter_referenced", 409, "name");
    }

    /// <summary>The registered versions a new adapter was validated against must still be the current ones (writes lock held).</summary>
    private void EnsureDependenciesCurrent(AdapterRecord record)
    {
        foreach (var dependency in record.Description.Dependencies)
        {
            if (!Registry.TryResolve(dependency.Name, out var now))
                throw new AdapterValidationException($"adapter_config.json: expert '{dependency.Name}' was deleted while '{record.Name}' was being stored", "expert_not_found");
            if (!ReferenceEquals(now, dependency))
                throw new AdapterStoreException($"expert '{dependency.Name}' was replaced while '{record.Name}' was being stored; send it again", "expert_changed", 409, "name");
        }
    }

    /// <summary>
    /// The adapters that use <paramref name="replacement"/>'s name, validated again against it (same version, new
    /// expert); a dependent the replacement no longer fits refuses the replacement with 409 naming it (writes lock held).
    /// </summary>
    private IReadOnlyList<AdapterRecord> RevalidateDependents(AdapterRecord replacement)
    {
        var refreshed = new List<AdapterRecord>();
        foreach (var dependent in Dependents(replacement.Name))
        {
            try
            {
                var description = AdapterValidator.Validate(dependent.Directory, _baseModel, _kinds, new AdapterValidationOptions(ScanWeights: false, _options.KasaTruncation,
                    Registered: n => n == replacement.Name ? replacement : Registry.TryResolve(n, out var r) ? r : null));
                refreshed.Add(dependent with { Description = description });
            }
            catch (AdapterValidationException e)
            {
                throw new AdapterStoreException(
                    $"adapter '{replacement.Name}' cannot be replaced by this version: '{dependent.Name}' uses it as an expert and would not fit it ({e.Message})",
                    "adapter_referenced", 409, "name");
            }
        }
        return refreshed;
    }

    private (AdapterDescription, IReadOnlyList<StoredFile>) Prepare(string peftDirectory, string versionStaging)
    {
        var description = AdapterValidator.Validate(peftDirectory, _baseModel, _kinds, new AdapterValidationOptions(ScanWeights: true, _options.KasaTruncation,
            Registered: name => Registry.TryResolve(name, out var expert) ? expert : null));
        var layout = description.Handler.Files;
        RefuseUnplaced(peftDirectory, layout, description.Kind);
        var names = layout.Find(peftDirectory);
        Directory.CreateDirectory(versionStaging);
        var folders = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var file in names)
        {
            string target = Path.Combine(versionStaging, file);
            string folder = Path.GetDirectoryName(target)!;
            if (folder != versionStaging && folders.Add(folder)) Directory.CreateDirectory(folder);
            File.Move(Path.Combine(peftDirectory, file), target);
            DurableFiles.FlushFile(target);
        }
        foreach (var folder in folders.Reverse()) DurableFiles.FlushDirectory(folder);     // nested folders (a mixer's experts), deepest first
        var (_, files) = ContentHash.Compute(versionStaging, names);
        return (description, files);
    }

    /// <summary>Refuses a received file in a subfolder that the adapter's kind does not place (it would be dropped silently).</summary>
    private static void RefuseUnplaced(string peftDirectory, AdapterFiles layout, AdapterKind kind)
    {
        foreach (var path in Directory.EnumerateFiles(peftDirectory, "*", SearchOption.AllDirectories))
        {
            string relative = Path.GetRelativePath(peftDirectory, path).Replace(Path.DirectorySeparatorChar, '/');
            if (relative.Contains('/') && !layout.Places(relative))
                throw new AdapterValidationException(
                    $"'{relative}' is not a file of a {kind} adapter (its files: {string.Join(", ", layout.Patterns.Select(p => p.Pattern))})", "unexpected_adapter_file");
        }
    }

    private void Open()
    {
        Directory.CreateDirectory(AdaptersDirectory);
        Directory.CreateDirectory(TmpDirectory);
        int stale = 0;
        foreach (var entry in Directory.EnumerateFileSystemEntries(TmpDirectory).ToList())
        {
            _logger.LogWarning("Removing staging leftover {Path} (an upload, registration or delete cut off by a crash or stop)", entry);
            if (Directory.Exists(entry) && new FileInfo(entry).LinkTarget is null) TryDelete(entry); else File.Delete(entry);
            stale++;
        }
        if (stale > 0) DurableFiles.FlushDirectory(TmpDirectory);
        var expectedBase = BaseModelShape.Of(_baseModel);

        // Two passes: a mixture whose referenced expert is listed after it opens once the others are open.
        var pending = Directory.EnumerateDirectories(AdaptersDirectory).Order(StringComparer.Ordinal).ToList();
        for (int pass = 0; pass < 2 && pending.Count > 0; pass++)
        {
            bool retrying = pass == 1;
            var deferred = new List<string>();
            foreach (var nameDirectory in pending)
            {
                string name = Path.GetFileName(nameDirectory);
                if (!AdapterName.IsValid(name)) { _logger.LogWarning("Ignoring {Path}: not a valid adapter name", nameDirectory); continue; }
                if (IsBaseModelName(name)) { _logger.LogWarning("Ignoring {Path}: an adapter may not be named like the base model", nameDirectory); continue; }
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
                    if (manifest.BaseModel != expectedBase)
                        throw new InvalidDataException($"it was stored for another base model ({manifest.BaseModel}, this one is {expectedBase})");
                    var description = AdapterValidator.Validate(directory, _baseModel, _kinds, new AdapterValidationOptions(ScanWeights: false, _options.KasaTruncation,
                        Registered: n => Registry.TryResolve(n, out var r) ? r : null));
                    Registry.Publish(new AdapterRecord(name, current, directory, description, manifest.ContentHash, manifest.Source, manifest.CreatedAt, manifest.UpdatedAt));
                }
                catch (AdapterValidationException e) when (e.Code == "expert_not_found" && !retrying)
                {
                    deferred.Add(nameDirectory);    // a mixture over an adapter listed after it: once the others are open
                    continue;
                }
                catch (Exception e) when (e is AdapterValidationException or InvalidDataException or IOException)
                {
                    _logger.LogWarning("Adapter {Name} v{Version} in {Path} is not served: {Reason}", name, current, directory, e.Message);
                    continue;
                }
                foreach (int old in versions.Skip(1)) TryDelete(VersionDirectory(name, old));
            }
            pending = deferred;
        }
        _logger.LogInformation("Adapter store {StorePath} for base model {BaseModelIdentity}: {Count} adapter(s)", DataDirectory, BaseModelIdentity, Registry.Count);
        if (_allowedPaths.Count == 0)
            _logger.LogWarning("Path registration (load_lora_adapter) is unconfined: any folder this server can read may be registered; set --allowed-adapter-paths (Server:AllowedAdapterPaths) to confine it");
        else
            _logger.LogInformation("Path registration is confined to {AllowedAdapterPaths}", _allowedPaths);
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
        DurableFiles.FlushDirectory(Path.Combine(AdaptersDirectory, name));
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
