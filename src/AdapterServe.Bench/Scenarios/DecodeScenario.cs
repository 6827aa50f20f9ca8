using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;

namespace AdapterServe.Bench.Scenarios;

/// <summary>Aggregate decode tokens/s of the base model at each batch size, and each batch's ratio to the smallest (measured in rounds).</summary>
public sealed class DecodeScenario : IScenario
{
    public bool UsesEngine => true;

    public async Task RunAsync(BenchContext context, BenchReport report, CancellationToken ct)
    {
        var o = context.Options;
        if (o.MaxTokens < 2) throw new UsageException("decode needs --max-tokens of at least 2 (the first token comes from the prefill)");
        var model = EngineSession.PrepareModel(context);
        await using var session = await EngineSession.StartAsync(context, report, model, o.Batches.Max(), o.PromptTokens + o.MaxTokens, adapters: null, ct);

        // Every batch size once per round, so the batch-B/batch-1 ratios compare passes taken moments apart.
        var rounds = await session.MeasureRoundsAsync(
            o.Batches.Select(batch => ($"decode b{batch}", (Func<Task<DecodeSample>>)(() =>
                DecodeMeasurement.RunAsync(session.Engine, session.Prompts, batch, o.PromptTokens, o.MaxTokens, _ => [], ct)))).ToList(),
            s => $"{s.TokensPerSecond:0.0} tokens/s");
        var throughput = new Dictionary<int, Figure>();
        foreach (var (batch, samples) in o.Batches.Zip(rounds))
        {
            throughput[batch] = report.Add(Figure.Of($"decode.b{batch}.tokens_per_s", "tokens/s", samples.Select(s => s.TokensPerSecond).ToList()));
            report.Add(Figure.Of($"decode.b{batch}.itl_ms_p50", "ms", samples.Select(s => s.InterTokenMsP50).ToList()));
            report.Add(Figure.Of($"decode.b{batch}.ttft_ms", "ms", samples.Select(s => s.TimeToFirstTokenMs).ToList()));
        }
        int smallest = o.Batches[0];
        foreach (int batch in o.Batches.Skip(1))
        {
            // Issue 5: batch 16 aggregate decode >= 4x batch 1 on 135m.
            var target = batch == 16 && smallest == 1 && session.ModelName == "135m" ? new Target(AtLeast: 4) : null;
            report.Add(Ratio.OfRounds($"decode.b{batch}/b{smallest}", throughput[batch], throughput[smallest], target));
        }
    }
}
