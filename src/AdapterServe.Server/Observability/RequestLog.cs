using System.Diagnostics;

namespace AdapterServe.Server.Observability;

/// <summary>
/// One structured line per request, written when the response is complete (for a stream: after <c>[DONE]</c>).
/// Generation requests carry model, adapters, token counts, time to first token, total time and finish reason, and
/// count in <c>adapterserve_requests_total</c>; <c>/health</c> and <c>/metrics</c> log at Debug. Never prompt text.
/// </summary>
internal sealed class RequestLog(RequestDelegate next, ILogger<RequestLog> logger)
{
    public async Task InvokeAsync(HttpContext http)
    {
        long start = Stopwatch.GetTimestamp();
        try
        {
            await next(http);
        }
        finally
        {
            Write(http, Stopwatch.GetElapsedTime(start));
        }
    }

    private void Write(HttpContext http, TimeSpan elapsed)
    {
        int status = http.RequestAborted.IsCancellationRequested ? 499 : http.Response.StatusCode;
        string path = http.Request.Path.Value ?? "/";
        var record = http.Features.Get<GenerationRecord>();
        if (record is null)
        {
            var level = path is "/health" or "/metrics" ? LogLevel.Debug : LogLevel.Information;
            logger.Log(level, "{Method:l} {Path:l} {StatusCode} in {TotalMs:F1} ms", http.Request.Method, path, status, elapsed.TotalMilliseconds);
            return;
        }
        string model = record.ModelAccepted && record.Model is not null ? record.Model : ServerMetrics.UnknownModel;
        ServerMetrics.Requests.WithLabels(model, status.ToString(System.Globalization.CultureInfo.InvariantCulture)).Inc();
        logger.LogInformation(
            "{Method:l} {Path:l} {StatusCode} model={Model:l} adapters={Adapters:l} stream={Stream} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} ttft_ms={TimeToFirstTokenMs:F1} total_ms={TotalMs:F1} finish={FinishReason:l}",
            http.Request.Method, path, status, record.Model, record.Adapters ?? "-", record.Stream, record.PromptTokens, record.CompletionTokens,
            record.TimeToFirstToken?.TotalMilliseconds, elapsed.TotalMilliseconds, record.FinishReason ?? "-");
    }
}
