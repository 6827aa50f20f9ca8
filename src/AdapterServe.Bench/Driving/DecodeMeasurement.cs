using System.Diagnostics;
using AdapterServe.Bench.Reporting;
using AdapterServe.Engine;

namespace AdapterServe.Bench.Driving;

/// <param name="TokensPerSecond">Aggregate decode throughput: tokens that arrived after every sequence had its first token, over that time.</param>
public sealed record DecodeSample(double TokensPerSecond, double InterTokenMsP50, double TimeToFirstTokenMs, int DecodeTokens, double DecodeSeconds);

/// <summary>
/// Decode throughput of one batch: B requests submitted at once; the clock starts when the last of them has its
/// first token (so every prefill is behind us) and stops at the last token.
/// </summary>
public static class DecodeMeasurement
{
    /// <param name="temperature">0: greedy; otherwise every request samples at this temperature, seeded by its index.</param>
    public static async Task<DecodeSample> RunAsync(IGenerationEngine engine, Prompts prompts, int batch, int promptTokens, int maxTokens,
        Func<int, IReadOnlyList<AdapterRef>> adaptersOfSequence, CancellationToken ct, float temperature = 0)
    {
        var requests = Enumerable.Range(0, batch).Select(i => GenerationDriver.Greedy(prompts.Next(promptTokens), maxTokens, adaptersOfSequence(i)))
            .Select((r, i) => temperature <= 0 ? r : r with { Sampling = r.Sampling with { Temperature = temperature, Seed = i } }).ToList();
        return Summarise(await GenerationDriver.RunAllAsync(engine, requests, ct));
    }

    public static DecodeSample Summarise(IReadOnlyList<GenerationTrace> traces)
    {
        long allStarted = traces.Max(t => t.TokenTimes[0]);
        long end = traces.Max(t => t.TokenTimes[^1]);
        int tokens = traces.Sum(t => t.TokenTimes.Count(at => at > allStarted));
        double seconds = Stopwatch.GetElapsedTime(allStarted, end).TotalSeconds;
        if (tokens == 0 || seconds <= 0)
            throw new BenchException("no decode token arrived after every sequence had its first token: raise --max-tokens");
        var gaps = traces.SelectMany(t => t.InterTokenMilliseconds()).ToList();
        return new DecodeSample(
            tokens / seconds,
            gaps.Count > 0 ? Stats.Median(gaps) : double.NaN,
            Stats.Median(traces.Select(t => t.TimeToFirstTokenSeconds * 1000).ToList()),
            tokens,
            seconds);
    }
}
