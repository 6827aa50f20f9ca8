namespace AdapterServe.Adapters.Store;

/// <summary>Settings of the adapter store and its HTTP endpoints, bound from the configuration section <c>Adapters</c>.</summary>
public sealed class AdapterStoreOptions
{
    public const string SectionName = "Adapters";

    /// <summary>Root of the store (<c>adapters/</c>, <c>tmp/</c>); relative paths are under the working directory.</summary>
    public string DataDirectory { get; set; } = "data";

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

    /// <summary>The admin keys, split on commas and trimmed.</summary>
    public IReadOnlyList<string> EffectiveAdminKeys() =>
        AdminKeys.SelectMany(k => (k ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();

    /// <summary>Problems with these settings (empty when valid).</summary>
    public IReadOnlyList<string> Problems()
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(DataDirectory)) problems.Add("Adapters:DataDirectory must not be empty");
        if (MaxUploadBytes <= 0) problems.Add($"Adapters:MaxUploadBytes must be positive (got {MaxUploadBytes})");
        if (MaxArchiveEntries <= 0) problems.Add($"Adapters:MaxArchiveEntries must be positive (got {MaxArchiveEntries})");
        if (MaxUncompressedBytes <= 0) problems.Add($"Adapters:MaxUncompressedBytes must be positive (got {MaxUncompressedBytes})");
        if (KasaTruncation is not ("peft" or "official")) problems.Add($"Adapters:KasaTruncation must be 'peft' or 'official' (got '{KasaTruncation}')");
        if (RetiredVersionGraceSeconds < 0) problems.Add($"Adapters:RetiredVersionGraceSeconds must not be negative (got {RetiredVersionGraceSeconds})");
        return problems;
    }
}
