using AdapterServe.Server.Hosting;
using AdapterServe.Server.OpenAI;

namespace AdapterServe.Server.Adapters;

/// <summary>OpenAI-shaped error results for the adapter endpoints, mapped by the server's one mapping (<see cref="ApiErrors"/>).</summary>
internal static class AdapterErrors
{
    public static IResult Result(int status, string message, string? code, string? param = null) =>
        ApiErrors.Result(ApiException.For(status, message, code, param));

    /// <summary>The store's and the validator's exceptions (and oversize bodies) as errors; the rest is a 500, logged.</summary>
    public static async ValueTask<object?> Filter(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        try { return await next(context); }
        catch (OperationCanceledException) when (context.HttpContext.RequestAborted.IsCancellationRequested) { throw; }
        catch (Exception e)
        {
            var error = ApiErrors.Map(e);
            if (error.StatusCode >= 500)
                context.HttpContext.RequestServices.GetService<ILoggerFactory>()?.CreateLogger("AdapterServe.Server.Adapters")
                    .LogError(e, "Adapter endpoint {Path} failed", context.HttpContext.Request.Path);
            return ApiErrors.Result(error);
        }
    }
}
