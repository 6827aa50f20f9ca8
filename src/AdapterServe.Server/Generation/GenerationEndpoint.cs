using System.Runtime.CompilerServices;
using AdapterServe.Engine;
using AdapterServe.Server.Observability;
using AdapterServe.Server.Hosting;
using AdapterServe.Server.OpenAI;

namespace AdapterServe.Server.Generation;

/// <summary>What the two generation endpoints share: reading the body and streaming chunks as Server-Sent Events.</summary>
internal static class GenerationEndpoint
{
    public const string DoneSentinel = "[DONE]";

    /// <summary>503 while the model loads; the body as <typeparamref name="T"/>; unknown fields logged at Debug and otherwise ignored.</summary>
    public static async Task<T> ReadAsync<T>(HttpContext http, IGenerationEngine engine, ILogger logger) where T : GenerationRequestBase
    {
        GenerationRecord.For(http);    // from here on the request counts as a generation request (log line, metrics)
        if (!engine.IsReady) throw ApiException.ModelLoading();
        var request = await ApiJson.ReadRequestAsync<T>(http.Request, http.RequestAborted);
        if (logger.IsEnabled(LogLevel.Debug))
        {
            var unknown = request.UnknownFieldPaths().ToList();
            if (unknown.Count > 0)
                logger.LogDebug("Ignoring unknown request field(s) {UnknownFields} of {Path}", unknown, http.Request.Path.Value);
        }
        return request;
    }

    /// <summary>
    /// The SSE payloads of a streamed answer: <paramref name="head"/>, then the chunks <paramref name="apply"/> makes of
    /// each event as it arrives, then <paramref name="tail"/> and <c>[DONE]</c>. A failure after the response started
    /// becomes one <c>{"error":…}</c> payload before <c>[DONE]</c>. Ends (and cancels generation) when the client goes away.
    /// </summary>
    public static async IAsyncEnumerable<string> StreamAsync(
        GenerationRun run,
        IEnumerable<object> head,
        Func<int, GenerationEvent, IEnumerable<object>> apply,
        Func<IEnumerable<object>> tail,
        GenerationRecord record,
        ILogger logger,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await using var _ = run;
        foreach (var chunk in head) yield return Serialize(chunk);
        await using var events = run.ReadAllAsync(cancellationToken).GetAsyncEnumerator(cancellationToken);
        ErrorResponse? failure = null;
        while (true)
        {
            List<object> chunks;
            try
            {
                if (!await events.MoveNextAsync()) break;
                chunks = apply(events.Current.Prompt, events.Current.Event).ToList();
            }
            catch (ApiException e)
            {
                logger.LogWarning("Streamed generation failed: {Message}", e.Message);
                failure = e.ToResponse();
                break;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                logger.LogError(e, "Streamed generation failed");
                failure = ErrorResponses.Internal(e).ToResponse();
                break;
            }
            foreach (var chunk in chunks) yield return Serialize(chunk);
        }
        if (failure is not null)
        {
            record.Failed();
            yield return Serialize(failure);
        }
        else
            foreach (var chunk in tail()) yield return Serialize(chunk);
        yield return DoneSentinel;
    }

    private static string Serialize(object value) => System.Text.Json.JsonSerializer.Serialize(value, value.GetType(), ApiJson.Options);

    public static string FinishReasonText(FinishEvent f) => f.Reason switch
    {
        FinishReason.Stop => "stop",
        FinishReason.Length => "length",
        FinishReason.Cancelled => throw ApiException.GenerationFailed($"Choice {f.Index} was cancelled by the engine before it finished (is the server shutting down?)."),
        _ when f.ErrorCode == EngineErrorCodes.StepFailed => throw ApiException.EngineStepFailed($"Generation of choice {f.Index} failed: {f.Error}."),
        _ => throw ApiException.GenerationFailed($"Generation of choice {f.Index} failed: {f.Error ?? "unknown engine error"}."),
    };

    public static long UnixNow() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();
}
