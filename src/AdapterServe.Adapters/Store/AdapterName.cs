namespace AdapterServe.Adapters.Store;

/// <summary>Adapter names: letters, digits, '-', '_', '.'; 1 to 128 characters; not "." or "..".</summary>
public static class AdapterName
{
    public const int MaxLength = 128;

    public static bool IsValid(string? name) => Problem(name) is null;

    /// <summary>Why <paramref name="name"/> is not a valid adapter name, or null when it is.</summary>
    public static string? Problem(string? name)
    {
        if (string.IsNullOrEmpty(name)) return "adapter name is empty";
        if (name.Length > MaxLength) return $"adapter name is {name.Length} characters long (at most {MaxLength})";
        if (name is "." or "..") return $"adapter name '{name}' is not allowed";
        foreach (char c in name)
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
                return $"adapter name '{Printable(name)}' contains '{Printable(c.ToString())}' (allowed: letters, digits, '-', '_', '.')";
        return null;
    }

    /// <summary>Throws <see cref="AdapterValidationException"/> (400, invalid_adapter_name) for a bad name.</summary>
    public static void Validate(string? name)
    {
        if (Problem(name) is { } problem) throw new AdapterValidationException(problem, "invalid_adapter_name");
    }

    private static string Printable(string s) =>
        string.Concat(s.Take(MaxLength + 8).Select(c => char.IsControl(c) ? $"\\u{(int)c:x4}" : c.ToString()));
}
