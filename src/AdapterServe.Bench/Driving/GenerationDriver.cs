using System.Diagnostics;
using System.Threading.Channels;
using AdapterServe.Engine;

namespace AdapterServe.Bench.Driving;

/// <summary>What one request did, as seen by the caller: when it was submitted and when each token arrived (Stopwatch ticks).</summary>
/// <param name="Tokens">The generated token ids, in order.</param>
public sealed record GenerationTrace(string RequestId, string Model, long SubmittedAt, IReadOnlyList<long> TokenTimes, int PromptTokens, IReadOnlyList<int> Tokens)
{
    public double TimeToFirstTokenSeconds => TokenTimes.Count == 0
        ? throw new InvalidOperationException($"request {RequestId} produced no token")
        : Stopwatch.GetElapsedTime(SubmittedAt, TokenTimes[0]).TotalSeconds;

    /// <summary>Gaps between consecutive tokens, in milliseconds.</summary>
    public IEnumerable<double> InterTokenMilliseconds()
    {
        for (int i = 1; i < TokenTimes.Count; i++) yield return Stopwatch.GetElapsedTime(TokenTimes[i - 1], TokenTimes[i]).TotalMilliseconds;
    }
}

/// <summary>Submits requests to the public engine API and records when their token events arrive.</summary>
public static class GenerationDriver
{
    /// <summary>A greedy request that ignores end-of-sequence, so it always produces exactly <paramref name="maxTokens"/> tokens.</summary>
    public static GenerationRequest Greedy(IReadOnlyList<int> prompt, int maxTokens, IReadOnlyList<AdapterRef>? adapters = null) => new()
    {
        RequestId = "bench-" + Guid.NewGuid().ToString("N")[..12],
        PromptTokens = prompt,
        Sampling = new SamplingParams { Temperature = 0, MaxTokens = maxTokens, IgnoreEos = true },
        Adapters = adapters ?? [],
    };

    /// <exception cref="BenchException">The request finished with an error, was cancelled, or stopped short.</exception>
    public static Task<GenerationTrace> RunAsync(IGenerationEngine engine, GenerationRequest request, CancellationToken ct)
    {
        long submitted = Stopwatch.GetTimestamp();
        ChannelReader<GenerationEvent> events;
        try { events = engine.Submit(request, ct); }
        catch (Exception e) when (e is QueueFullException or ContextLengthExceededException or AdapterNotFoundException or ArgumentException)
        {
            throw new BenchException($"the engine refused request {request.RequestId} ({ModelOf(engine, request)}): {e.Message}", e);
        }
        return ReadAsync(engine, request, events, submitted, ct);
    }

    /// <summary>Reads the events of a request submitted at <paramref name="submitted"/> (Stopwatch ticks) to its end.</summary>
    /// <exception cref="BenchException">The request finished with an error, was cancelled, or stopped short.</exception>
    public static async Task<GenerationTrace> ReadAsync(IGenerationEngine engine, GenerationRequest request, ChannelReader<GenerationEvent> events, long submitted, CancellationToken ct)
    {
        string model = ModelOf(engine, request);
        var times = new List<long>(request.Sampling.MaxTokens);
        var tokens = new List<int>(request.Sampling.MaxTokens);
        FinishEvent? finish = null;
        await foreach (var e in events.ReadAllAsync(ct))
        {
            switch (e)
            {
                case TokenEvent t: times.Add(Stopwatch.GetTimestamp()); tokens.Add(t.TokenId); break;
                case FinishEvent f: finish = f; break;
            }
        }
        if (finish is null) throw new BenchException($"request {request.RequestId} ({model}) ended without a finish event");
        if (finish.Reason is FinishReason.Error or FinishReason.Cancelled)
            throw new BenchException($"request {request.RequestId} ({model}) finished with {finish.Reason}: {finish.Error ?? "no message"}");
        if (times.Count < request.Sampling.MaxTokens)
            throw new BenchException($"request {request.RequestId} ({model}) produced {times.Count} tokens, expected {request.Sampling.MaxTokens} (finish reason {finish.Reason})");
        return new GenerationTrace(request.RequestId, model, submitted, times, finish.PromptTokens, tokens);
    }

    private static string ModelOf(IGenerationEngine engine, GenerationRequest request) =>
        request.Adapters.Count == 0 ? engine.Model.Id : string.Join("+", request.Adapters.Select(a => a.Name));

    /// <summary>Submits every request at once (in order, without awaiting between them) and waits for all.</summary>
    public static Task<GenerationTrace[]> RunAllAsync(IGenerationEngine engine, IEnumerable<GenerationRequest> requests, CancellationToken ct) =>
        Task.WhenAll(requests.Select(r => RunAsync(engine, r, ct)).ToList());
}
