using AdapterServe.Bench.Adapters;
using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;
using AdapterServe.Engine;

namespace AdapterServe.Bench.Scenarios;

/// <summary>
/// Decode throughput with adapters, as ratios to the base in the same run: every line of <see cref="AdapterCases.Table"/>
/// with one adapter runs at every batch size; lines with N distinct adapters run at the largest batch (sequence i
/// uses adapter i mod N) and are also divided by their single-adapter line. Each batch size is measured in rounds
/// (base and every case once per round), and each ratio is the median over rounds.
/// </summary>
public sealed class AdaptersScenario : IScenario
{
    public bool UsesEngine => true;

    public async Task RunAsync(BenchContext context, BenchReport report, CancellationToken ct)
    {
        var o = context.Options;
        if (o.MaxTokens < 2) throw new UsageException("adapters needs --max-tokens of at least 2 (the first token comes from the prefill)");
        var cases = AdapterCases.Select(o.Cases);
        int largest = o.Batches.Max();
        var plan = cases.Select(c => (Case: c, Batches: c.Distinct == 1 ? o.Batches : c.Distinct <= largest ? [largest] : Array.Empty<int>())).ToList();
        foreach (var (c, _) in plan.Where(p => p.Batches.Count == 0))
            report.Notes.Add($"{c.Name} skipped: {c.Distinct} distinct adapters need a batch of at least {c.Distinct} (largest --batches is {largest})");

        var model = EngineSession.PrepareModel(context);
        var directories = new AdapterDirectories(o.CacheDir, model.Name, model.Config, o.Seed, context.Log);
        var used = plan.Where(p => p.Batches.Count > 0).SelectMany(p => Enumerable.Range(0, p.Case.Distinct).Select(i => (p.Case, Index: i)))
            .DistinctBy(u => u.Case.AdapterName(u.Index)).ToList();
        // Every adapter of the run stays resident (no load or eviction while a line is measured): at least as many
        // device slots as distinct adapters, whatever --device-cache says.
        int slots = Math.Max(o.DeviceCache, used.Count);
        if (slots > o.DeviceCache) report.Notes.Add($"device cache raised from {o.DeviceCache} to {slots}: the run uses {used.Count} distinct adapters, all kept resident");
        await using var room = AdapterRoom.Open(new AdapterRoomOptions(model.Config, o.Dtype, o.Device, DeviceSlots: slots, HostSlots: slots), context.Loggers);
        var weightBytes = new Dictionary<string, long>();                                          // per adapter: its weights on disk
        foreach (var (c, i) in used) weightBytes[c.AdapterName(i)] = room.Register(c.AdapterName(i), directories.Ensure(c, i)).Description.WeightBytes;

        await using var session = await EngineSession.StartAsync(context, report, model, largest, o.PromptTokens + o.MaxTokens, room, ct);

        // The weight bytes one decode step reads on each line: the base's, plus every weight of the line's adapters (each
        // kind here reads all of its weights every step: a mixture all of its experts). Where a step is bound by memory
        // traffic, tokens/s go as their inverse: the "weight_bytes_bound" ratios are the throughput ratios that traffic
        // alone allows, next to the measured ones.
        int elementBytes = o.Dtype == "bfloat16" ? 2 : 4;                                         // the bench writes its adapters in float32; they load in --dtype
        long baseBytes = report.Model!.Parameters * elementBytes;
        var lineBytes = new Dictionary<string, Figure> { ["base"] = report.Add(Figure.Of("adapters.base.weight_bytes", "bytes", [baseBytes])) };
        foreach (var (c, _) in plan.Where(p => p.Batches.Count > 0))
            lineBytes[c.Name] = report.Add(Figure.Of($"adapters.{c.Name}.weight_bytes", "bytes",
                [baseBytes + Enumerable.Range(0, c.Distinct).Sum(i => weightBytes[c.AdapterName(i)]) / 4 * elementBytes]));
        foreach (var (c, _) in plan.Where(p => p.Batches.Count > 0))
        {
            report.Add(Ratio.Between($"adapters.{c.Name}.weight_bytes_bound/base", lineBytes["base"], lineBytes[c.Name]));
            if (c.ComparedTo is { } single && lineBytes.TryGetValue(single, out var one))
                report.Add(Ratio.Between($"adapters.{c.Name}.weight_bytes_bound/{single}", one, lineBytes[c.Name]));
        }

        // Per batch size, the base and every case at that size once per round, back to back: each ratio is the median
        // over rounds of passes taken moments apart.
        foreach (int batch in o.Batches)
        {
            var lines = new List<(string Name, Func<int, IReadOnlyList<AdapterRef>> Adapters, AdapterCase? Case)> { ("base", _ => [], null) };
            foreach (var (c, batches) in plan.Where(p => p.Batches.Contains(batch)))
                lines.Add((c.Name, i => [new AdapterRef(c.AdapterName(i % c.Distinct))], c));
            // Each pass also reads the engine's step-phase counters before and after: where a step's time goes.
            var rounds = await session.MeasureRoundsAsync(
                lines.Select(l => ($"{l.Name} b{batch}", (Func<Task<(DecodeSample Sample, StepPhaseShare Phases)>>)(async () =>
                {
                    var before = EngineStepPhases.Totals();
                    var sample = await DecodeMeasurement.RunAsync(session.Engine, session.Prompts, batch, o.PromptTokens, o.MaxTokens, l.Adapters, ct);
                    return (sample, StepPhaseShare.Between(before, EngineStepPhases.Totals()));
                }))).ToList(),
                s => $"{s.Sample.TokensPerSecond:0.0} tokens/s");

            var measured = new Dictionary<string, Figure>();
            foreach (var (line, passes) in lines.Zip(rounds))
            {
                var samples = passes.Select(p => p.Sample).ToList();
                report.Add(Figure.Of($"adapters.{line.Name}.b{batch}.itl_ms_p50", "ms", samples.Select(s => s.InterTokenMsP50).ToList()));
                measured[line.Name] = report.Add(Figure.Of($"adapters.{line.Name}.b{batch}.tokens_per_s", "tokens/s", samples.Select(s => s.TokensPerSecond).ToList()));
                // Engine-thread ms per step by phase (the pass's steps, its few prefill steps included).
                foreach (var phase in EngineStepPhases.All)
                    report.Add(Figure.Of($"adapters.{line.Name}.b{batch}.phase.{phase}_ms", "ms", passes.Select(p => p.Phases.MsPerStep(phase)).ToList()));
            }
            foreach (var (_, _, c) in lines)
            {
                if (c is null) continue;
                bool targeted = c.Target is not null && c.TargetBatches?.Contains(batch) == true;
                report.Add(Ratio.OfRounds($"adapters.{c.Name}.b{batch}/base", measured[c.Name], measured["base"], targeted && c.ComparedTo is null ? c.Target : null));
                if (c.ComparedTo is { } single && measured.TryGetValue(single, out var one))
                    report.Add(Ratio.OfRounds($"adapters.{c.Name}.b{batch}/{single}", measured[c.Name], one, targeted ? c.Target : null));
            }
        }
    }
}
