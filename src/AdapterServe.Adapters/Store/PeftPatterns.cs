using System.Text.RegularExpressions;

namespace AdapterServe.Adapters.Store;

/// <summary>PEFT's regular-expression rules for module names, with a time limit (patterns come from uploads).</summary>
public static class PeftPatterns
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMilliseconds(250);

    /// <summary>Python <c>re.fullmatch(pattern, name)</c>.</summary>
    public static bool FullMatch(string pattern, string name) => Matches($"^(?:{pattern})$", name);

    /// <summary>rank_pattern / alpha_pattern key rule: <c>re.match(r"(.*\.)?(" + key + r")$", name)</c>.</summary>
    public static bool PatternKeyMatches(string key, string name) => Matches($@"^(?:.*\.)?(?:{key})$", name);

    /// <summary>The value of the first key (in file order) that matches <paramref name="name"/>.</summary>
    public static bool FirstMatch<T>(IReadOnlyList<KeyValuePair<string, T>> patterns, string name, out T value)
    {
        foreach (var (key, v) in patterns)
            if (PatternKeyMatches(key, name)) { value = v; return true; }
        value = default!;
        return false;
    }

    public static bool IsValidRegex(string pattern, out string? error)
    {
        try { _ = new Regex(pattern, RegexOptions.CultureInvariant, Timeout); error = null; return true; }
        catch (ArgumentException e) { error = e.Message; return false; }
    }

    private static bool Matches(string regex, string name)
    {
        try { return Regex.IsMatch(name, regex, RegexOptions.CultureInvariant, Timeout); }
        catch (RegexMatchTimeoutException)
        {
            throw new AdapterValidationException($"{AdapterValidator.ConfigFileName}: the pattern '{regex}' took too long to match '{name}'", "invalid_adapter_config");
        }
    }
}
