using AdapterServe.Server.OpenAI;
using Microsoft.AspNetCore.Diagnostics;

namespace AdapterServe.Server.Hosting;

/// <summary>
/// Every failure leaves as an OpenAI error <c>{"error":{…}}</c>, mapped by <see cref="ApiErrors"/>: <see cref="ApiException"/>s
/// with their status, engine refusals (429, 404, 400), anything else 500 (logged with its stack). A client that went away gets nothing.
/// </summary>
internal sealed class ErrorResponses(RequestDelegate next, ILogger<ErrorResponses> logger)
{
    public async Task InvokeAsync(HttpContext http)
    {
        try
        {
            await next(http);
        }
        catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
        {
            logger.LogDebug("{Method} {Path}: the client went away", http.Request.Method, http.Request.Path.Value);
        }
        catch (Exception e)
        {
            var error = ApiErrors.Map(e);
            // 503 is a state the server is in (loading, draining for shutdown), not a failure to log with its stack.
            if (error.StatusCode >= 500 && error.StatusCode != StatusCodes.Status503ServiceUnavailable)
                logger.LogError(e, "{Method} {Path} failed", http.Request.Method, http.Request.Path.Value);
            if (http.Response.HasStarted)
            {
                logger.LogWarning("{Method} {Path}: {Message} (after the response started; closing the connection)", http.Request.Method, http.Request.Path.Value, error.Message);
                http.Abort();
                return;
            }
            await ApiErrors.WriteAsync(http, error);
        }
    }

    /// <summary>Bodies for the framework's own empty error responses (unknown path 404, wrong method 405, …).</summary>
    public static Task StatusCodePage(StatusCodeContext context)
    {
        var http = context.HttpContext;
        int status = http.Response.StatusCode;
        string path = http.Request.Path.Value ?? "/";
        var error = status switch
        {
            404 => new ApiException(status, "invalid_request_error", "not_found", null, $"Unknown path: {http.Request.Method} {path}."),
            405 => new ApiException(status, "invalid_request_error", "method_not_allowed", null, $"{http.Request.Method} is not allowed on {path}."),
            _ => new ApiException(status, status >= 500 ? "server_error" : "invalid_request_error", null, null, $"HTTP {status} on {path}."),
        };
        return ApiErrors.WriteAsync(http, error);
    }
}

internal static class OpenAIErrorMetadata
{
    /// <summary>Documents the OpenAI error body for each of <paramref name="statusCodes"/>.</summary>
    public static RouteHandlerBuilder ProducesOpenAIErrors(this RouteHandlerBuilder builder, params int[] statusCodes)
    {
        foreach (int status in statusCodes) builder.Produces<ErrorResponse>(status, "application/json");
        return builder;
    }
}
