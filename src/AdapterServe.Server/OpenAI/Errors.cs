using System.Text.Json.Serialization;
using AdapterServe.Engine;

namespace AdapterServe.Server.OpenAI;

/// <summary>The OpenAI error envelope: <c>{"error":{"message","type","param","code"}}</c>.</summary>
public sealed record ErrorResponse([property: JsonPropertyName("error")] ErrorBody Error);

/// <summary>One error. <c>param</c> names the request field at fault (null when none); <c>code</c> is machine-readable.</summary>
/// <param name="Message" example="temperature must be between 0 and 2, got 3.">What went wrong, naming the culprit.</param>
/// <param name="Type" example="invalid_request_error">Error family.</param>
/// <param name="Param" example="temperature">The request field at fault.</param>
/// <param name="Code" example="invalid_value">Machine-readable code.</param>
public sealed record ErrorBody(
    [property: JsonPropertyName("message")] string Message,
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("param")] string? Param,
    [property: JsonPropertyName("code")] string? Code);

/// <summary>
/// A request that ends in an OpenAI-shaped error. Thrown anywhere below an endpoint; <see cref="Hosting.ErrorResponses"/>
/// turns it into the HTTP response (<see cref="Hosting.ApiErrors"/> maps other exceptions to it).
/// </summary>
public sealed class ApiException(int statusCode, string type, string? code, string? param, string message) : Exception(message)
{
    public int StatusCode { get; } = statusCode;
    public string Type { get; } = type;
    public string? Code { get; } = code;
    public string? Param { get; } = param;

    public ErrorResponse ToResponse() => new(new ErrorBody(Message, Type, Param, Code));

    /// <summary>An error whose type follows from its status: server_error (5xx), permission_error (403), otherwise invalid_request_error.</summary>
    public static ApiException For(int statusCode, string message, string? code, string? param = null) =>
        new(statusCode, statusCode >= 500 ? "server_error" : statusCode == StatusCodes.Status403Forbidden ? "permission_error" : "invalid_request_error", code, param, message);

    public static ApiException InvalidValue(string param, string message) =>
        new(StatusCodes.Status400BadRequest, "invalid_request_error", "invalid_value", param, message);

    public static ApiException Unsupported(string param, string message) =>
        new(StatusCodes.Status400BadRequest, "invalid_request_error", "unsupported_value", param, message);

    public static ApiException InvalidJson(string message, string? param = null) =>
        new(StatusCodes.Status400BadRequest, "invalid_request_error", "invalid_json", param, message);

    /// <summary>prompt + max_tokens does not fit the context (400, OpenAI's code for it).</summary>
    public static ApiException CompletionTooLong(string param, string message) =>
        new(StatusCodes.Status400BadRequest, "invalid_request_error", "context_length_exceeded", param, message);

    /// <summary>The prompt alone does not fit the context (413).</summary>
    public static ApiException PromptTooLong(string param, string message) =>
        new(StatusCodes.Status413PayloadTooLarge, "invalid_request_error", "context_length_exceeded", param, message);

    /// <summary>The prompt text is larger than the server reads (413), refused before it is tokenized.</summary>
    public static ApiException PromptTooLarge(string param, string message) =>
        new(StatusCodes.Status413PayloadTooLarge, "invalid_request_error", "prompt_too_large", param, message);

    /// <summary>The request body is larger than the server reads (413), refused before it is parsed.</summary>
    public static ApiException RequestTooLarge(long? bytes, long limit) =>
        new(StatusCodes.Status413PayloadTooLarge, "invalid_request_error", "request_too_large", null, bytes is long b
            ? $"The request body has {b} bytes; this server accepts at most {limit} bytes for this endpoint."
            : $"The request body is larger than this server accepts for this endpoint (at most {limit} bytes).");

    public static ApiException InvalidApiKey(string message) =>
        new(StatusCodes.Status401Unauthorized, "invalid_request_error", "invalid_api_key", null, message);

    public static ApiException ModelNotFound(string param, string name) =>
        new(StatusCodes.Status404NotFound, "invalid_request_error", "model_not_found", param, param == "model"
            ? $"The model '{name}' does not exist. GET /v1/models lists the models served here."
            : $"The adapter '{name}' named in '{param}' does not exist. GET /v1/models lists the models served here.");

    public static ApiException QueueFull(string message) =>
        new(StatusCodes.Status429TooManyRequests, "rate_limit_error", "queue_full", null, message);

    public static ApiException ModelLoading() =>
        new(StatusCodes.Status503ServiceUnavailable, "service_unavailable", "model_loading", null,
            "The model is still loading; retry when GET /health answers 200.");

    /// <summary>The server is draining for shutdown (503): refused before it started, or cut off at the drain timeout.</summary>
    public static ApiException ShuttingDown(string message) =>
        new(StatusCodes.Status503ServiceUnavailable, "service_unavailable", "server_shutting_down", null, message);

    public static ApiException GenerationFailed(string message) =>
        new(StatusCodes.Status500InternalServerError, "server_error", "generation_failed", null, message);

    /// <summary>A forward step failed for this request's sequence; <paramref name="message"/> carries the error id of the server log line.</summary>
    public static ApiException EngineStepFailed(string message) =>
        new(StatusCodes.Status500InternalServerError, "server_error", EngineErrorCodes.StepFailed, null, message);
}
