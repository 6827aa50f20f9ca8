using AdapterServe.Server.OpenAI;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Hosting;

/// <summary>Bearer API keys for <c>/v1/*</c> (open when none are configured), compared by <see cref="BearerKeys"/>.</summary>
public static class ApiKeyConventions
{
    /// <summary>Puts endpoints (a group) behind the <c>--api-key</c> bearer keys, as <c>/v1/*</c> is.</summary>
    public static TBuilder RequireApiKey<TBuilder>(this TBuilder builder) where TBuilder : IEndpointConventionBuilder =>
        builder.AddEndpointFilter<TBuilder, ApiKeyFilter>();
}

internal sealed class ApiKeyFilter(IOptions<ServerOptions> options) : IEndpointFilter
{
    private readonly BearerKeys _keys = new(options.Value.EffectiveApiKeys);

    public ValueTask<object?> InvokeAsync(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        if (_keys.IsEmpty) return next(context);
        var http = context.HttpContext;
        if (BearerKeys.Presented(http.Request) is not { } key)
        {
            http.Response.Headers.WWWAuthenticate = "Bearer";
            throw ApiException.InvalidApiKey("You didn't provide an API key: send it as 'Authorization: Bearer <key>'.");
        }
        if (!_keys.Contains(key))
        {
            http.Response.Headers.WWWAuthenticate = "Bearer error=\"invalid_token\"";
            throw ApiException.InvalidApiKey("Incorrect API key provided.");
        }
        return next(context);
    }
}
