using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Server.OpenAI;

namespace AdapterServe.Server.Adapters;

/// <summary>OpenAI-shaped error results for the adapter endpoints.</summary>
internal static class AdapterErrors
{
    public static IResult Result(int status, string message, string? code, string? param = null)
    {
        string type = status switch
        {
            >= 500 => "server_error",
            403 => "permission_error",
            _ => "invalid_request_error",
        };
        return TypedResults.Json(new ApiError(new ApiErrorBody(message, type, param, code)), AdapterJson.Options, statusCode: status);
    }

    private static string? Param(AdapterValidationException e) =>
        e.StatusCode == 413 ? "file"
        : e.Code == "invalid_adapter_name" ? "name"
        : e.Code.StartsWith("adapter_path_", StringComparison.Ordinal) || e.Code == "invalid_lora_path" ? "lora_path"
        : null;

    /// <summary>Maps the store's and the validator's exceptions (and oversize bodies) to errors; the rest is a 500.</summary>
    public static async ValueTask<object?> Filter(EndpointFilterInvocationContext context, EndpointFilterDelegate next)
    {
        try { return await next(context); }
        catch (ApiException e) { return TypedResults.Json(e.ToResponse(), ApiJson.Options, statusCode: e.StatusCode); }
        catch (AdapterValidationException e) { return Result(e.StatusCode, e.Message, e.Code, Param(e)); }
        catch (AdapterStoreException e) { return Result(e.StatusCode, e.Message, e.Code, e.Param); }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            return Result(413, $"the request body is larger than the server accepts: {e.Message}", "upload_too_large", "file");
        }
        catch (BadHttpRequestException e) { return Result(e.StatusCode, e.Message, "bad_request"); }
        catch (OperationCanceledException) when (context.HttpContext.RequestAborted.IsCancellationRequested) { throw; }
        catch (Exception e)
        {
            context.HttpContext.RequestServices.GetService<ILoggerFactory>()?.CreateLogger("AdapterServe.Server.Adapters")
                .LogError(e, "Adapter endpoint {Path} failed", context.HttpContext.Request.Path);
            return Result(500, $"the adapter operation failed on the server ({e.GetType().Name})", "internal_error");
        }
    }
}
