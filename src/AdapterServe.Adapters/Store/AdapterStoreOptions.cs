namespace AdapterServe.Adapters.Store;

/// <summary>Settings of the adapter store and its HTTP endpoints, bound from the configuration section <c>Adapters</c>.</summary>
public sealed class AdapterStoreOptions
{
    public const string SectionName = "Adapters";

    /// <summary>
    /// The store's own folder (<c>adapters/</c>, <c>tmp/</c>) used as it is, for one base model; relative paths are under
    /// the working directory. Unset (the usual case): <c>&lt;data root&gt;/models/&lt;base model identity&gt;/</c>, see
    /// <see cref="DataRoot"/>.
    /// </summary>
    public string? DataDirectory { get; set; }

    /// <summary>
    /// The server's data folder (<c>--data-dir</c>, <c>Server:DataDir</c>); each base model gets its own store under
    /// <c>models/</c> in it. Unset: <c>$XDG_DATA_HOME/adapterserve</c>, else <c>~/.local/share/adapterserve</c>.
    /// </summary>
    public string? DataRoot { get; set; }

    /// <summary>
    /// Folders that path registration (<c>load_lora_adapter</c>) may read from (<c>--allowed-adapter-paths</c>,
    /// <c>Server:AllowedAdapterPaths</c>); a path that does not resolve (symbolic links followed) under one of them is
    /// refused with 403. Empty: unconfined (a warning is logged at start). Entries may hold several comma-separated folders.
    /// </summary>
    public string[] AllowedAdapterPaths { get; set; } = [];

    /// <summary>Longest time reading the files of a path registration may take before it is abandoned (400 adapter_path_timeout).</summary>
    public double PathReadTimeoutSeconds { get; set; } = 300;

    /// <summary>Largest accepted upload (all file parts together); beyond it the upload is refused with 413.</summary>
    public long MaxUploadBytes { get; set; } = 2L << 30;

    /// <summary>Most entries (files and folders) an uploaded archive may hold.</summary>
    public int MaxArchiveEntries { get; set; } = 256;

    /// <summary>Most bytes the entries of an uploaded archive may expand to (zip/gzip bombs).</summary>
    public long MaxUncompressedBytes { get; set; } = 4L << 30;

    /// <summary>
    /// Bearer keys allowed to write and delete adapters. Each entry may also hold several keys separated by commas.
    /// Empty: every write endpoint is refused (403).
    /// </summary>
    public string[] AdminKeys { get; set; } = [];

    /// <summary>KaSA truncation rule when the adapter does not say: "peft" (keep k − r components) or "official" (keep d_in − r).</summary>
    public string KasaTruncation { get; set; } = "peft";

    /// <summary>
    /// A version replaced by a newer one is deleted from disk once no sequence uses the adapter and at least this
    /// long after the replace (covers a request that resolved the old version but has not started yet).
    /// </summary>
    public double RetiredVersionGraceSeconds { get; set; } = 10;

    /// <summary>The allowed folders, split on commas and trimmed (not yet resolved).</summary>
    public IReadOnlyList<string> EffectiveAllowedAdapterPaths() =>
        AllowedAdapterPaths.SelectMany(k => (k ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();

    /// <summary>
    /// Where the store of the base model <paramref name="baseModelIdentity"/> lives: <see cref="DataDirectory"/> when set,
    /// else <c>&lt;root&gt;/models/&lt;identity&gt;</c> with the root from <see cref="DataRoot"/> or <see cref="DefaultDataRoot"/>.
    /// </summary>
    public string StoreDirectory(string baseModelIdentity, Func<string, string?>? environment = null) =>
        Path.GetFullPath(DataDirectory is { Length: > 0 } explicitFolder
            ? explicitFolder
            : Path.Combine(DataRoot is { Length: > 0 } root ? root : DefaultDataRoot(environment), "models", baseModelIdentity));

    /// <summary>The per-user data folder: <c>$XDG_DATA_HOME/adapterserve</c> (an absolute XDG_DATA_HOME), else <c>~/.local/share/adapterserve</c>.</summary>
    public static string DefaultDataRoot(Func<string, string?>? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        if (environment("XDG_DATA_HOME") is { Length: > 0 } xdg && Path.IsPathRooted(xdg)) return Path.Combine(xdg, "adapterserve");
        string home = environment("HOME") is { Length: > 0 } h ? h : Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return Path.Combine(home, ".local", "share", "adapterserve");
    }

    /// <summary>The admin keys, split on commas and trimmed.</summary>
    public IReadOnlyList<string> EffectiveAdminKeys() =>
        AdminKeys.SelectMany(k => (k ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();

    /// <summary>Problems with these settings (empty when valid).</summary>
    public IReadOnlyList<string> Problems()
    {
        var problems = new List<string>();
        if (DataDirectory is not null && string.IsNullOrWhiteSpace(DataDirectory)) problems.Add("Adapters:DataDirectory must not be blank");
        if (DataRoot is not null && string.IsNullOrWhiteSpace(DataRoot)) problems.Add("Server:DataDir (--data-dir) must not be blank");
        if (DataDirectory?.Contains('\0') == true || DataRoot?.Contains('\0') == true) problems.Add("the data folder must not contain a NUL character");
        if (EffectiveAllowedAdapterPaths().FirstOrDefault(p => !Path.IsPathRooted(p) || p.Contains('\0')) is { } relative)
            problems.Add($"Server:AllowedAdapterPaths (--allowed-adapter-paths) must hold absolute folders (got '{relative}')");
        if (!(PathReadTimeoutSeconds > 0)) problems.Add($"Adapters:PathReadTimeoutSeconds must be positive (got {PathReadTimeoutSeconds})");
        if (MaxUploadBytes <= 0) problems.Add($"Adapters:MaxUploadBytes must be positive (got {MaxUploadBytes})");
        if (MaxArchiveEntries <= 0) problems.Add($"Adapters:MaxArchiveEntries must be positive (got {MaxArchiveEntries})");
        if (MaxUncompressedBytes <= 0) problems.Add($"Adapters:MaxUncompressedBytes must be positive (got {MaxUncompressedBytes})");
        if (KasaTruncation is not ("peft" or "official")) problems.Add($"Adapters:KasaTruncation must be 'peft' or 'official' (got '{KasaTruncation}')");
        if (RetiredVersionGraceSeconds < 0) problems.Add($"Adapters:RetiredVersionGraceSeconds must not be negative (got {RetiredVersionGraceSeconds})");
        return problems;
    }
}
