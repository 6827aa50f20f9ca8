using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Engine;
using AdapterServe.Modeling.Tokenization;
using AdapterServe.Server.Generation;
using AdapterServe.Server.OpenAI;

namespace AdapterServe.Server.Hosting;

/// <summary>
/// The server's one exception → OpenAI error mapping, used by the error middleware (<see cref="ErrorResponses"/>), the
/// generation runs (which know the request's field names) and the adapter endpoints. Anything unknown is a 500 whose
/// message names only the exception type; the details go to the log.
/// </summary>
internal static class ApiErrors
{
    /// <param name="e">What went wrong.</param>
    /// <param name="plan">The generation request the failure belongs to, if any: names the fields at fault (<c>max_completion_tokens</c>, <c>adapters</c>).</param>
    public static ApiException Map(Exception e, GenerationPlan? plan = null) => Known(e, plan) ?? Internal(e);

    /// <summary>The error for an exception the server expects (a refusal, a client mistake); null for anything else (a bug: 500).</summary>
    public static ApiException? Known(Exception e, GenerationPlan? plan = null) => e switch
    {
        ApiException a => a,
        QueueFullException q => ApiException.QueueFull(q.Message),
        ContextLengthExceededException c => ApiException.CompletionTooLong(plan?.MaxTokensParam ?? "max_tokens", c.Message),
        AdapterNotFoundException a when plan is not null && a.AdapterName != plan.ModelAdapter => ApiException.ModelNotFound("adapters", a.AdapterName),
        AdapterNotFoundException a => ApiException.ModelNotFound("model", plan?.Model ?? a.AdapterName),
        ChatTemplateException t => new ApiException(StatusCodes.Status400BadRequest, "invalid_request_error", "chat_template_error", "messages", t.Message),
        AdapterValidationException v => ApiException.For(v.StatusCode, v.Message, v.Code,
            v.StatusCode == StatusCodes.Status413PayloadTooLarge ? "file"
            : v.Code == "invalid_adapter_name" ? "name"
            : v.Code.StartsWith("adapter_path_", StringComparison.Ordinal) || v.Code == "invalid_lora_path" ? "lora_path"
            : null),
        AdapterStoreException s => ApiException.For(s.StatusCode, s.Message, s.Code, s.Param),
        BadHttpRequestException { StatusCode: StatusCodes.Status413PayloadTooLarge } b =>
            new ApiException(b.StatusCode, "invalid_request_error", "request_too_large", null, $"The request body is larger than this server accepts: {b.Message}"),
        BadHttpRequestException b => new ApiException(b.StatusCode, "invalid_request_error", null, null, b.Message),
        _ => null,
    };

    public static ApiException Internal(Exception e) =>
        new(StatusCodes.Status500InternalServerError, "server_error", "internal_error", null,
            $"The server had an error while processing your request ({e.GetType().Name}); the server log has the details.");

    /// <summary>Writes <paramref name="error"/> as the response (status and OpenAI body).</summary>
    public static Task WriteAsync(HttpContext http, ApiException error)
    {
        http.Response.StatusCode = error.StatusCode;
        http.Response.ContentType = "application/json";
        return http.Response.WriteAsync(ApiJson.Serialize(error.ToResponse()), http.RequestAborted);
    }

    /// <summary><paramref name="error"/> as an endpoint result.</summary>
    public static IResult Result(ApiException error) =>
        TypedResults.Json(error.ToResponse(), ApiJson.Options, statusCode: error.StatusCode);
}
