using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;
using AdapterServe.Engine;
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
        // Each pass also reads the engine's step-phase counters before and after: where a step's time goes outside the forward.
        var rounds = await session.MeasureRoundsAsync(
            o.Batches.Select(batch => ($"decode b{batch}", (Func<Task<(DecodeSample Sample, StepPhaseShare Phases)>>)(async () =>
            {
                var before = EngineStepPhases.Totals();
                var sample = await DecodeMeasurement.RunAsync(session.Engine, session.Prompts, batch, o.PromptTokens, o.MaxTokens, _ => [], ct, o.Temperature);
                return (sample, StepPhaseShare.Between(before, EngineStepPhases.Totals()));
            }))).ToList(),
            s => $"{s.Sample.TokensPerSecond:0.0} tokens/s");
        var throughput = new Dictionary<int, Figure>();
        foreach (var (batch, passes) in o.Batches.Zip(rounds))
        {
            var samples = passes.Select(p => p.Sample).ToList();
            throughput[batch] = report.Add(Figure.Of($"decode.b{batch}.tokens_per_s", "tokens/s", samples.Select(s => s.TokensPerSecond).ToList()));
            report.Add(Figure.Of($"decode.b{batch}.itl_ms_p50", "ms", samples.Select(s => s.InterTokenMsP50).ToList()));
            report.Add(Figure.Of($"decode.b{batch}.ttft_ms", "ms", samples.Select(s => s.TimeToFirstTokenMs).ToList()));
            // Engine-thread ms per step by phase (the pass's steps: its few prefill steps included).
            foreach (var phase in EngineStepPhases.All)
                report.Add(Figure.Of($"decode.b{batch}.phase.{phase}_ms", "ms", passes.Select(p => p.Phases.MsPerStep(phase)).ToList()));
            report.Add(Figure.Of($"decode.b{batch}.outside_forward_ms", "ms", passes.Select(p => p.Phases.MsPerStepOutside("forward")).ToList()));
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
