using AdapterServe.Engine;
using AdapterServe.Server.OpenAI;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterServe.Server.Hosting;

/// <summary><c>GET /health</c>: 200 when the model is loaded, 503 (OpenAI-shaped error) while it loads. No key needed.</summary>
internal static class HealthEndpoints
{
    public static IEndpointRouteBuilder MapHealth(this IEndpointRouteBuilder app)
    {
        app.MapGet("/health", Check)
            .WithName("Health")
            .WithSummary("200 when the model is loaded and requests are served; 503 while it loads")
            .WithTags("Operations");
        return app;
    }

    internal static Results<Ok<HealthStatus>, JsonHttpResult<ErrorResponse>> Check(IGenerationEngine engine) =>
        engine.IsReady
            ? TypedResults.Ok(new HealthStatus("ok", engine.Model.Id))
            : TypedResults.Json(ApiException.ModelLoading().ToResponse(), ApiJson.Options, statusCode: StatusCodes.Status503ServiceUnavailable);
}
