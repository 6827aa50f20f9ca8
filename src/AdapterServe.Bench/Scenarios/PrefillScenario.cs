using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;

namespace AdapterServe.Bench.Scenarios;

/// <summary>Prompt tokens/s and time to first token for one request per prompt length (one generated token).</summary>
public sealed class PrefillScenario : IScenario
{
    public bool UsesEngine => true;

    public async Task RunAsync(BenchContext context, BenchReport report, CancellationToken ct)
    {
        var o = context.Options;
        var model = EngineSession.PrepareModel(context);
        await using var session = await EngineSession.StartAsync(context, report, model, maxBatch: 1, o.PromptLengths.Max() + o.MaxTokens, adapters: null, ct);
        var rounds = await session.MeasureRoundsAsync(
            o.PromptLengths.Select(length => ($"prefill {length}", (Func<Task<double>>)(async () =>
                (await GenerationDriver.RunAsync(session.Engine, GenerationDriver.Greedy(session.Prompts.Next(length), o.MaxTokens), ct)).TimeToFirstTokenSeconds))).ToList(),
            s => $"ttft {s * 1000:0.0} ms");
        foreach (var (length, ttft) in o.PromptLengths.Zip(rounds))
        {
            report.Add(Figure.Of($"prefill.p{length}.tokens_per_s", "tokens/s", ttft.Select(s => length / s).ToList()));
            report.Add(Figure.Of($"prefill.p{length}.ttft_ms", "ms", ttft.Select(s => s * 1000).ToList()));
        }
        if (o.PromptLengths.Count > 1)
        {
            int shortest = o.PromptLengths[0], longest = o.PromptLengths[^1];
            report.Add(Ratio.OfRounds($"prefill.p{longest}/p{shortest}", report.Figure($"prefill.p{longest}.tokens_per_s"), report.Figure($"prefill.p{shortest}.tokens_per_s")));
        }
    }
}
