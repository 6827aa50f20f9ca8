using AdapterServe.Bench.Adapters;
using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;
using AdapterServe.Engine;

namespace AdapterServe.Bench.Scenarios;

/// <summary>
/// Decode throughput with adapters, as ratios to the base in the same run: every line of <see cref="AdapterCases.Table"/>
/// with one adapter runs at every batch size; lines with N distinct adapters run at the largest batch (sequence i
/// uses adapter i mod N) and are also divided by their single-adapter line.
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
        int distinctMax = plan.Where(p => p.Batches.Count > 0).Select(p => p.Case.Distinct).DefaultIfEmpty(1).Max();
        int slots = Math.Max(o.DeviceCache, distinctMax);
        await using var room = AdapterRoom.Open(new AdapterRoomOptions(model.Config, o.Dtype, o.Device, DeviceSlots: slots, HostSlots: slots));
        var registered = new HashSet<string>();
        foreach (var (c, batches) in plan.Where(p => p.Batches.Count > 0))
            for (int i = 0; i < c.Distinct; i++)
                if (registered.Add(c.AdapterName(i))) room.Register(c.AdapterName(i), directories.Ensure(c, i));

        await using var session = await EngineSession.StartAsync(context, report, model, largest, o.PromptTokens + o.MaxTokens, room, ct);

        async Task<Figure> Measure(string name, int batch, Func<int, IReadOnlyList<AdapterRef>> adapters)
        {
            var samples = await session.MeasureAsync($"{name} b{batch}",
                () => DecodeMeasurement.RunAsync(session.Engine, session.Prompts, batch, o.PromptTokens, o.MaxTokens, adapters, ct),
                s => $"{s.TokensPerSecond:0.0} tokens/s");
            report.Add(Figure.Of($"adapters.{name}.b{batch}.itl_ms_p50", "ms", samples.Select(s => s.InterTokenMsP50).ToList()));
            return report.Add(Figure.Of($"adapters.{name}.b{batch}.tokens_per_s", "tokens/s", samples.Select(s => s.TokensPerSecond).ToList()));
        }

        var baseline = new Dictionary<int, Figure>();
        foreach (int batch in o.Batches) baseline[batch] = await Measure("base", batch, _ => []);

        var measured = new Dictionary<(string Case, int Batch), Figure>();
        foreach (var (c, batches) in plan)
            foreach (int batch in batches)
            {
                var figure = measured[(c.Name, batch)] = await Measure(c.Name, batch, i => [new AdapterRef(c.AdapterName(i % c.Distinct))]);
                bool targeted = c.Target is not null && c.TargetBatches?.Contains(batch) == true;
                report.Add(Ratio.Between($"adapters.{c.Name}.b{batch}/base", figure, baseline[batch], targeted && c.ComparedTo is null ? c.Target : null));
                if (c.ComparedTo is { } single && measured.TryGetValue((single, batch), out var one))
                    report.Add(Ratio.Between($"adapters.{c.Name}.b{batch}/{single}", figure, one, targeted ? c.Target : null));
            }
    }
}
