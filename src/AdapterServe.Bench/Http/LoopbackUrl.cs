using System.Net;

namespace AdapterServe.Bench.Http;

/// <summary>The load generator only talks to this machine: 127.0.0.0/8, ::1 or localhost.</summary>
public static class LoopbackUrl
{
    /// <exception cref="UsageException">Not an absolute http(s) URL, or its host is not loopback.</exception>
    public static Uri Parse(string url)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new UsageException($"--url '{url}' is not an absolute http:// or https:// URL");
        if (!IsLoopbackHost(uri.Host))
            throw new UsageException($"--url '{url}': host '{uri.Host}' is not loopback; the load generator only targets this machine (127.0.0.0/8, ::1, localhost)");
        return uri;
    }

    public static bool IsLoopbackHost(string host)
    {
        if (string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase)) return true;
        return IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip);
    }
}
