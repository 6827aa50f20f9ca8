using AdapterServe.Adapters.Store;
using AdapterServe.Server.Hosting;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Adapters;

/// <summary>
/// The <c>--api-key</c> keys on the adapter endpoints, as on the rest of <c>/v1/*</c> (open when none are configured),
/// with the admin keys admitted too: reading the registry needs a key, and an admin key that is not also an API key
/// can still manage adapters. Writes are further guarded by <see cref="AdminKeyFilter"/>.
/// </summary>
internal sealed class AdapterApiKeyFilter(IOptions<ServerOptions> server, IOptions<AdapterStoreOptions> adapters) : IEndpointFilter
{
    private readonly ApiKeyFilter _apiKeys = new(server);
    private readonly BearerKeys _adminKeys = new(adapters.Value.EffectiveAdminKeys());

    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next) =>
        _adminKeys.Admits(context.HttpContext.Request) ? next(context) : _apiKeys.InvokeAsync(context, next);
}
