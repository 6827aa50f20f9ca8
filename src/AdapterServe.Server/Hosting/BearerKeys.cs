using System.Security.Cryptography;
using System.Text;

namespace AdapterServe.Server.Hosting;

/// <summary>
/// A set of bearer keys (API keys, admin keys) and the one reader of <c>Authorization: Bearer &lt;key&gt;</c>. Keys are
/// compared as SHA-256 digests with <see cref="CryptographicOperations.FixedTimeEquals"/> against every key of the set,
/// so neither the position of the first wrong character nor the key's length shows in the timing.
/// </summary>
public sealed class BearerKeys(IEnumerable<string> keys)
{
    private const string Scheme = "Bearer ";
    private readonly byte[][] _digests = keys.Select(Digest).ToArray();

    public bool IsEmpty => _digests.Length == 0;

    /// <summary>The key the request presents, or null when it has no <c>Authorization: Bearer</c> header or an empty key.</summary>
    public static string? Presented(HttpRequest request)
    {
        string header = request.Headers.Authorization.ToString();
        if (!header.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase)) return null;
        string token = header[Scheme.Length..].Trim();
        return token.Length == 0 ? null : token;
    }

    /// <summary>Whether <paramref name="key"/> is one of the set; time independent of which key matches, and of the keys' lengths.</summary>
    public bool Contains(string key)
    {
        var presented = Digest(key);
        bool match = false;
        foreach (var digest in _digests) match |= CryptographicOperations.FixedTimeEquals(digest, presented);
        return match;
    }

    /// <summary>Whether the request presents one of the set's keys.</summary>
    public bool Admits(HttpRequest request) => Presented(request) is { } key && Contains(key);

    private static byte[] Digest(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));
}
