using AdapterServe.Adapters.Store;
using AdapterServe.Server.Hosting;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Adapters;

/// <summary>
/// Guards every adapter endpoint that writes or deletes: it needs <c>Authorization: Bearer &lt;admin key&gt;</c>.
/// No key: 401. A key that is not an admin key (an ordinary API key may only read and use adapters): 403.
/// No admin key configured: writes are disabled (403). Keys are compared by <see cref="BearerKeys"/> (constant time over digests).
/// </summary>
public sealed class AdminKeyFilter(IOptions<AdapterStoreOptions> options) : IEndpointFilter
{
    private readonly BearerKeys _keys = new(options.Value.EffectiveAdminKeys());

    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        if (_keys.IsEmpty)
            return ValueTask.FromResult<object?>(AdapterErrors.Result(403,
                "adapter writes are disabled: no admin key is configured (start the server with --admin-key KEY or set Adapters:AdminKeys)",
                "admin_key_not_configured"));

        string? key = BearerKeys.Presented(context.HttpContext.Request);
        if (key is null)
        {
            context.HttpContext.Response.Headers.WWWAuthenticate = "Bearer";
            return ValueTask.FromResult<object?>(AdapterErrors.Result(401,
                "this endpoint needs an admin key: send 'Authorization: Bearer <admin key>'", "invalid_api_key"));
        }
        if (!_keys.Contains(key))
            return ValueTask.FromResult<object?>(AdapterErrors.Result(403,
                "this key may read and use adapters but not change them; an admin key is required", "admin_key_required"));
        return next(context);
    }
}
