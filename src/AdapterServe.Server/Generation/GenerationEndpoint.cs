using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;
using AdapterServe.Engine;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Http.HttpResults;
using AdapterServe.Server.Observability;
using AdapterServe.Server.Hosting;
using AdapterServe.Server.OpenAI;

namespace AdapterServe.Server.Generation;

/// <summary>The answer to one generation request, built event by event: the whole response, or the chunks of a stream.</summary>
internal interface IGenerationAnswer<TResponse>
{
    string Id { get; }
    /// <summary>Chunks sent before the first event (chat: the role of every choice).</summary>
    IEnumerable<object> Head();
    /// <summary>Takes in one engine event of prompt <paramref name="prompt"/>; returns the stream chunks it makes (none when not streaming).</summary>
    IEnumerable<object> Apply(int prompt, GenerationEvent e, bool streaming);
    /// <summary>Chunks after the last event (the usage chunk when <c>include_usage</c> asked for it).</summary>
    IEnumerable<object> Tail();
    /// <summary>The whole response once every choice finished.</summary>
    TResponse Final();
}

/// <summary>What the two generation endpoints share: the handler, reading the body, streaming chunks as Server-Sent Events.</summary>
internal static class GenerationEndpoint
{
    public const string DoneSentinel = "[DONE]";

    /// <summary>
    /// The one generation handler: reads <typeparamref name="TRequest"/>, validates it into a plan, submits it, and
    /// answers with the whole <typeparamref name="TResponse"/> or (with <c>stream: true</c>) Server-Sent Events. Refusals
    /// that arrive with the first event still become HTTP errors, since a stream starts only after it.
    /// </summary>
    public static async Task<Results<Ok<TResponse>, ServerSentEventsResult<string>>> CreateAsync<TRequest, TResponse>(
        HttpContext http, IGenerationEngine engine, RequestLimits limits, ILogger logger,
        Func<TRequest, GenerationRecord, GenerationPlan> plan,
        Func<GenerationPlan, GenerationRecord, IGenerationAnswer<TResponse>> answer) where TRequest : GenerationRequestBase
    {
        var request = await ReadAsync<TRequest>(http, engine, limits, logger);
        var record = GenerationRecord.For(http);
        var accepted = plan(request, record);
        var response = answer(accepted, record);
        var run = GenerationRun.Start(engine, accepted, response.Id, http.RequestAborted, http.RequestServices.GetRequiredService<ServerDrain>().Expired);
        record.ModelAccepted = true;
        if (accepted.Stream)
        {
            try { await run.WaitForFirstEventAsync(http.RequestAborted); }
            catch { await run.DisposeAsync(); throw; }
            return TypedResults.ServerSentEvents(StreamAsync(
                run, response.Head(), (p, e) => response.Apply(p, e, streaming: true), response.Tail, record, logger, http.RequestAborted));
        }
        await using (run)
        {
            await foreach (var (p, e) in run.ReadAllAsync(http.RequestAborted)) response.Apply(p, e, streaming: false);
        }
        return TypedResults.Ok(response.Final());
    }

    /// <summary>
    /// 503 while the model loads; a body beyond <see cref="RequestLimits.MaxRequestBodyBytes"/> → 413 before it is read;
    /// the body as <typeparamref name="T"/>; unknown fields logged at Debug and otherwise ignored.
    /// </summary>
    public static async Task<T> ReadAsync<T>(HttpContext http, IGenerationEngine engine, RequestLimits limits, ILogger logger) where T : GenerationRequestBase
    {
        GenerationRecord.For(http);    // from here on the request counts as a generation request (log line, metrics)
        if (!engine.IsReady) throw ApiException.ModelLoading();
        if (http.Request.ContentLength > limits.MaxRequestBodyBytes) throw ApiException.RequestTooLarge(http.Request.ContentLength.Value, limits.MaxRequestBodyBytes);
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } bodyLimit)
            bodyLimit.MaxRequestBodySize = limits.MaxRequestBodyBytes;     // a chunked body is cut off by Kestrel at the same bound
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
                failure = ApiErrors.Internal(e).ToResponse();
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
        _ when f.ErrorCode == EngineErrorCodes.StepFailed => throw ApiException.EngineStepFailed($"Generation of choice {f.Index} failed: {WithoutServerPaths(f.Error ?? "unknown engine error")}."),
        _ => throw ApiException.GenerationFailed($"Generation of choice {f.Index} failed: {WithoutServerPaths(f.Error ?? "unknown engine error")}."),
    };

    /// <summary>An absolute file path (two or more segments, or a drive-letter path): what an engine error may say about a model or adapter file.</summary>
    private static readonly Regex AbsolutePath = new(@"(?<![\w.~:-])(?:/[^\s/'"";:,()]+){2,}/?|\b[A-Za-z]:\\[^\s'"";,()]+", RegexOptions.CultureInvariant);

    /// <summary>The engine's error text for the client, with the server's file paths (an adapter or model file named in a load failure) left out.</summary>
    public static string WithoutServerPaths(string message) => AbsolutePath.Replace(message, "<server path>");

    public static long UnixNow() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();
}
