namespace AdapterServe.Adapters;

/// <summary>
/// One file of an adapter directory, as a path relative to it with '/' separators. A <c>*</c> segment stands for any
/// one folder name (a LoRA-Mixer's <c>experts/*/adapter_model.safetensors</c>); folder names follow adapter names'
/// rules (letters, digits, '-', '_', '.'; not '.' or '..').
/// </summary>
/// <param name="Required">Only for patterns without <c>*</c>: the directory must hold the file. A kind checks its
/// nested files itself when it describes the adapter.</param>
public sealed record AdapterFilePattern(string Pattern, bool Required = true)
{
    public IReadOnlyList<string> Segments { get; } = Pattern.Split('/');

    /// <summary>Does the relative path (split into segments) name a file of this pattern?</summary>
    public bool Matches(IReadOnlyList<string> segments)
    {
        if (segments.Count != Segments.Count) return false;
        for (int i = 0; i < segments.Count; i++)
        {
            if (Segments[i] == "*" ? !Store.AdapterName.IsValid(segments[i]) : !string.Equals(Segments[i], segments[i], StringComparison.Ordinal))
                return false;
        }
        return true;
    }
}

/// <summary>
/// The files a kind's adapter directory holds. Upload, staging, the store and archive extraction place exactly these:
/// a nested file no kind places is refused, other files at the adapter folder's top (a README) are left behind.
/// </summary>
public sealed record AdapterFiles(IReadOnlyList<AdapterFilePattern> Patterns)
{
    public const string ConfigFileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";

    /// <summary>The PEFT layout: <c>adapter_config.json</c> and <c>adapter_model.safetensors</c>.</summary>
    public static AdapterFiles Peft { get; } = new([new(ConfigFileName), new(WeightsFileName)]);

    /// <summary>Does <paramref name="relativePath"/> ('/'-separated) name a file of this layout?</summary>
    public bool Places(string relativePath) => Places(relativePath.Split('/'));

    public bool Places(IReadOnlyList<string> segments) => Patterns.Any(p => p.Matches(segments));

    /// <summary>
    /// The files of this layout present in <paramref name="directory"/> (relative, '/'-separated, ordinal order).
    /// Only the folders a pattern names are listed (never a whole tree) and folder links are not entered; whatever sits
    /// at a file's path is listed (a link, a folder, a FIFO): callers that read files from outside check each one.
    /// </summary>
    public IReadOnlyList<string> Find(string directory)
    {
        var found = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var pattern in Patterns)
            Expand(directory, pattern.Segments, 0, "", found);
        return [.. found];
    }

    /// <summary>Required files missing from <paramref name="directory"/>.</summary>
    public IEnumerable<string> Missing(string directory) =>
        Patterns.Where(p => p.Required && !p.Pattern.Contains('*') && !File.Exists(Path.Combine(directory, p.Pattern)))
            .Select(p => p.Pattern);

    private static void Expand(string directory, IReadOnlyList<string> segments, int index, string prefix, SortedSet<string> found)
    {
        string segment = segments[index];
        bool last = index == segments.Count - 1;
        IEnumerable<string> names = segment != "*" ? [segment]
            : Directory.Exists(directory) ? Directory.EnumerateDirectories(directory).Select(Path.GetFileName).OfType<string>().Where(Store.AdapterName.IsValid) : [];
        foreach (var name in names)
        {
            string path = Path.Combine(directory, name);
            string relative = prefix + name;
            if (last)
            {
                if (File.Exists(path) || Directory.Exists(path) || new FileInfo(path).LinkTarget is not null) found.Add(relative);
            }
            else if (Directory.Exists(path) && new DirectoryInfo(path).LinkTarget is null)
            {
                Expand(path, segments, index + 1, relative + "/", found);
            }
        }
    }
}
