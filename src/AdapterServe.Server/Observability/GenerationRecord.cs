using System.Diagnostics;

namespace AdapterServe.Server.Observability;

/// <summary>
/// What one generation request did, filled in by the endpoint and written by <see cref="RequestLog"/> as the
/// request's log line and metrics. Never holds prompt or completion text.
/// </summary>
public sealed class GenerationRecord
{
    public long StartTimestamp { get; } = Stopwatch.GetTimestamp();
    /// <summary>The <c>model</c> of the request.</summary>
    public string? Model { get; set; }
    /// <summary>True once the model is known to exist (the base id, or an adapter the engine accepted); unknown names never become metric labels.</summary>
    public bool ModelAccepted { get; set; }
    public string? Adapters { get; set; }
    public bool Stream { get; set; }
    public int PromptTokens { get; set; }
    public int CompletionTokens { get; set; }
    public TimeSpan? TimeToFirstToken { get; private set; }
    private readonly SortedSet<string> _finishReasons = new(StringComparer.Ordinal);

    public string? FinishReason => _finishReasons.Count == 0 ? null : string.Join(",", _finishReasons);

    public void TokenArrived() => TimeToFirstToken ??= Stopwatch.GetElapsedTime(StartTimestamp);

    public void Finished(string reason, int completionTokens)
    {
        _finishReasons.Add(reason);
        CompletionTokens += completionTokens;
    }

    /// <summary>A streamed answer that ended in an error payload (its HTTP status was already 200).</summary>
    public void Failed() => _finishReasons.Add("error");

    public static GenerationRecord For(HttpContext http)
    {
        var record = http.Features.Get<GenerationRecord>();
        if (record is null)
        {
            record = new GenerationRecord();
            http.Features.Set(record);
        }
        return record;
    }
}
