using System.Security.Cryptography;
using System.Text;
using AdapterServe.Server.OpenAI;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Hosting;

/// <summary>
/// Bearer API keys for <c>/v1/*</c> (open when none are configured). Keys are compared as SHA-256 digests with
/// <see cref="CryptographicOperations.FixedTimeEquals"/> against every configured key, so neither the position of the
/// first wrong character nor the key's length shows in the timing.
/// </summary>
public static class ApiKeyConventions
{
    /// <summary>Puts endpoints (a group) behind the <c>--api-key</c> bearer keys, as <c>/v1/*</c> is.</summary>
    public static TBuilder RequireApiKey<TBuilder>(this TBuilder builder) where TBuilder : IEndpointConventionBuilder =>
        builder.AddEndpointFilter<TBuilder, ApiKeyFilter>();
}

internal sealed class ApiKeyFilter(IOptions<ServerOptions> options) : IEndpointFilter
{
    private readonly byte[][] _digests = options.Value.EffectiveApiKeys.Select(Digest).ToArray();

    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        if (_digests.Length == 0) return next(context);
        var http = context.HttpContext;
        string? header = http.Request.Headers.Authorization;
        if (header is null || !header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            http.Response.Headers.WWWAuthenticate = "Bearer";
            throw ApiException.InvalidApiKey("You didn't provide an API key: send it as 'Authorization: Bearer <key>'.");
        }
        var presented = Digest(header["Bearer ".Length..].Trim());
        bool match = false;
        foreach (var digest in _digests) match |= CryptographicOperations.FixedTimeEquals(digest, presented);
        if (!match)
        {
            http.Response.Headers.WWWAuthenticate = "Bearer error=\"invalid_token\"";
            throw ApiException.InvalidApiKey("Incorrect API key provided.");
        }
        return next(context);
    }

    private static byte[] Digest(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));
}
