using System.Security.Cryptography;
using System.Text;
using AdapterServe.Adapters.Store;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Adapters;

/// <summary>
/// Guards every adapter endpoint that writes or deletes: it needs <c>Authorization: Bearer &lt;admin key&gt;</c>.
/// No key: 401. A key that is not an admin key (an ordinary API key may only read and use adapters): 403.
/// No admin key configured: writes are disabled (403).
/// </summary>
public sealed class AdminKeyFilter(IOptions<AdapterStoreOptions> options) : IEndpointFilter
{
    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        var keys = options.Value.EffectiveAdminKeys();
        if (keys.Count == 0)
            return ValueTask.FromResult<object?>(AdapterErrors.Result(403,
                "adapter writes are disabled: no admin key is configured (start the server with --admin-key KEY or set Adapters:AdminKeys)",
                "admin_key_not_configured"));

        string? token = BearerToken(context.HttpContext.Request);
        if (token is null)
        {
            context.HttpContext.Response.Headers.WWWAuthenticate = "Bearer";
            return ValueTask.FromResult<object?>(AdapterErrors.Result(401,
                "this endpoint needs an admin key: send 'Authorization: Bearer <admin key>'", "invalid_api_key"));
        }
        if (!IsAdminKey(token, keys))
            return ValueTask.FromResult<object?>(AdapterErrors.Result(403,
                "this key may read and use adapters but not change them; an admin key is required", "admin_key_required"));
        return next(context);
    }

    /// <summary>Whether the request carries one of the configured admin keys (for a server-wide API-key check that should also admit admins).</summary>
    public static bool IsAdmin(HttpContext http, AdapterStoreOptions options) =>
        BearerToken(http.Request) is { } token && IsAdminKey(token, options.EffectiveAdminKeys());

    private static bool IsAdminKey(string token, IReadOnlyList<string> keys)
    {
        var presented = Encoding.UTF8.GetBytes(token);
        bool match = false;
        foreach (var key in keys) match |= CryptographicOperations.FixedTimeEquals(presented, Encoding.UTF8.GetBytes(key));
        return match;
    }

    private static string? BearerToken(HttpRequest request)
    {
        string header = request.Headers.Authorization.ToString();
        const string scheme = "Bearer ";
        if (!header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) return null;
        string token = header[scheme.Length..].Trim();
        return token.Length == 0 ? null : token;
    }
}
