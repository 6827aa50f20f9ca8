using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;
using AdapterServe.Modeling.Llama;

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
        // The step's floor (its GEMMs alone) and its native-call count, on a second copy of the model while the engine idles.
        using (var copy = StepProfile.LoadModel(model.Directory, o.Dtype, o.Device))
            foreach (int batch in o.Batches)
            {
                var profiles = Enumerable.Range(0, o.Repeats).Select(_ => StepProfile.Measure(copy, batch, o.PromptTokens + o.MaxTokens / 2, iterations: 10)).ToList();
                var floor = report.Add(Figure.Of($"decode.b{batch}.floor_ms", "ms", profiles.Select(p => p.FloorMs).ToList()));
                var forward = report.Add(Figure.Of($"decode.b{batch}.forward_ms", "ms", profiles.Select(p => p.ForwardMs).ToList()));
                report.Add(Figure.Of($"decode.b{batch}.tensors_per_step", "count", profiles.Select(p => (double)p.TensorsPerStep).ToList()));
                report.Add(Figure.Of($"decode.b{batch}.tensors_per_layer", "count", profiles.Select(p => p.TensorsPerLayer).ToList()));
                var itl = report.Figures.Single(f => f.Name == $"decode.b{batch}.itl_ms_p50");
                // Issue 13: a decode step within 15 % (b1) and 25 % (b16) of its GEMMs alone, on 135m.
                var target = session.ModelName != "135m" ? null : batch == 1 ? new Target(AtMost: 1.15) : batch == 16 ? new Target(AtMost: 1.25) : null;
                report.Add(Ratio.OfRounds($"decode.b{batch}.overhead", itl, floor, target));
                report.Add(Ratio.OfRounds($"decode.b{batch}.forward/floor", forward, floor));
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
