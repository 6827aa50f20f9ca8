using AdapterServe.Engine;
using AdapterServe.Server.OpenAI;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterServe.Server.Hosting;

/// <summary>
/// <c>GET /health</c>: 200 when the model is loaded, 503 (OpenAI-shaped error) while it loads, 503 with status
/// <c>draining</c> once the server is shutting down (<see cref="ServerDrain"/>). No key needed.
/// </summary>
internal static class HealthEndpoints
{
    public static IEndpointRouteBuilder MapHealth(this IEndpointRouteBuilder app)
    {
        app.MapGet("/health", Check)
            .WithName("Health")
            .WithSummary("200 when the model is loaded and requests are served; 503 while it loads or drains for shutdown")
            .WithTags("Operations");
        return app;
    }

    internal static Results<Ok<HealthStatus>, JsonHttpResult<HealthStatus>, JsonHttpResult<ErrorResponse>> Check(IGenerationEngine engine, ServerDrain drain) =>
        drain.IsDraining ? TypedResults.Json(new HealthStatus("draining", engine.Model.Id), ApiJson.Options, statusCode: StatusCodes.Status503ServiceUnavailable)
        : engine.IsReady ? TypedResults.Ok(new HealthStatus("ok", engine.Model.Id))
        : TypedResults.Json(ApiException.ModelLoading().ToResponse(), ApiJson.Options, statusCode: StatusCodes.Status503ServiceUnavailable);
}
