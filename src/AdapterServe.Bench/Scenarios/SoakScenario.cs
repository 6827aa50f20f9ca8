using System.Diagnostics;
using AdapterServe.Bench.Adapters;
using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;
using AdapterServe.Engine;

namespace AdapterServe.Bench.Scenarios;

/// <summary>
/// Many generations (each on the base or a random adapter; the base alone with <c>--soak-adapters 0</c>) at a fixed
/// concurrency, with resident memory at the start, the middle and the end: a leak shows as end &gt; middle.
/// </summary>
public sealed class SoakScenario : IScenario
{
    public bool UsesEngine => true;

    public async Task RunAsync(BenchContext context, BenchReport report, CancellationToken ct)
    {
        var o = context.Options;
        var model = EngineSession.PrepareModel(context);
        AdapterRoom? room = null;
        var choices = new List<IReadOnlyList<AdapterRef>> { Array.Empty<AdapterRef>() };
        if (o.SoakAdapters > 0)
        {
            var adapter = AdapterCases.Table.Single(c => c.Name == "lora-r16");
            var directories = new AdapterDirectories(o.CacheDir, model.Name, model.Config, o.Seed, context.Log);
            // Host tier as small as the device's: with more adapters than slots, evicted ones are read from disk again
            // (tensors created and disposed all along the run, which is what a leak would show on).
            room = AdapterRoom.Open(new AdapterRoomOptions(model.Config, o.Dtype, o.Device, o.DeviceCache, HostSlots: o.DeviceCache), context.Loggers);
            for (int i = 0; i < o.SoakAdapters; i++)
            {
                room.Register(adapter.AdapterName(i), directories.Ensure(adapter, i));
                choices.Add([new AdapterRef(adapter.AdapterName(i))]);
            }
            report.Notes.Add($"each generation on the base or one of {o.SoakAdapters} r16 all-projection adapters, uniformly at random, behind a device cache of {o.DeviceCache} and a host cache of {o.DeviceCache}");
        }
        else
            report.Notes.Add("soak on the base model alone (--soak-adapters 0)");

        try
        {
            await using var session = await EngineSession.StartAsync(context, report, model, o.Concurrency, o.PromptTokens + o.MaxTokens, room, ct);
            var random = new Random(o.Seed);
            var pick = new Lock();
            GenerationRequest Next()
            {
                lock (pick) return GenerationDriver.Greedy(session.Prompts.Next(o.PromptTokens), o.MaxTokens, choices[random.Next(choices.Count)]);
            }

            for (int w = 0; w < o.Warmup; w++)
                await GenerationDriver.RunAllAsync(session.Engine, Enumerable.Range(0, o.Concurrency).Select(_ => Next()), ct);
            report.Memory.Add(MachineProbe.Memory("start", context.Clock, withTorch: true));

            int started = 0, completed = 0, errors = 0;
            long tokens = 0;
            var ttft = new List<double>();
            string? firstError = null;
            var clock = Stopwatch.StartNew();
            async Task Worker()
            {
                while (Interlocked.Increment(ref started) <= o.Generations)
                {
                    try
                    {
                        var trace = await GenerationDriver.RunAsync(session.Engine, Next(), ct);
                        Interlocked.Add(ref tokens, trace.TokenTimes.Count);
                        lock (ttft) ttft.Add(trace.TimeToFirstTokenSeconds * 1000);
                    }
                    catch (BenchException e)
                    {
                        Interlocked.Increment(ref errors);
                        Interlocked.CompareExchange(ref firstError, e.Message, null);
                    }
                    int done = Interlocked.Increment(ref completed);
                    if (done == o.Generations / 2)
                        lock (report.Memory) report.Memory.Add(MachineProbe.Memory("middle", context.Clock, withTorch: true));
                    if (done % Math.Max(1, o.Generations / 10) == 0) context.Log($"soak: {done}/{o.Generations} generations");
                }
            }
            await Task.WhenAll(Enumerable.Range(0, o.Concurrency).Select(_ => Task.Run(Worker, ct)));
            double seconds = clock.Elapsed.TotalSeconds;
            report.Memory.Add(MachineProbe.Memory("end", context.Clock, withTorch: true));

            report.Add(Figure.Of("soak.generations", "count", [completed]));
            report.Add(Figure.Of("soak.errors", "count", [errors]));
            report.Add(Figure.Of("soak.seconds", "s", [seconds]));
            report.Add(Figure.Of("soak.tokens_per_s", "tokens/s", [tokens / seconds]));
            report.Add(new Figure("soak.ttft_ms_p50", "ms", ttft.Count > 0 ? Stats.Percentile(ttft, 50) : double.NaN, []));
            report.Add(new Figure("soak.ttft_ms_p99", "ms", ttft.Count > 0 ? Stats.Percentile(ttft, 99) : double.NaN, []));
            var middle = report.Memory.Single(m => m.Label == "middle");
            var end = report.Memory.Single(m => m.Label == "end");
            // Issue 5: resident memory at the end within 10 % of the middle.
            report.Add(new Ratio("soak.working_set.end/middle", "memory.end.working_set_bytes", "memory.middle.working_set_bytes",
                (double)end.WorkingSetBytes / middle.WorkingSetBytes, new Target(AtLeast: 0.90, AtMost: 1.10)));
            report.Add(new Ratio("soak.live_tensors.end/middle", "memory.end.torch_live_tensors", "memory.middle.torch_live_tensors",
                (double)end.TorchLiveTensors!.Value / Math.Max(1, middle.TorchLiveTensors!.Value)));
            if (errors > 0) report.Errors.Add($"{errors} of {o.Generations} generations failed; the first: {firstError}");
        }
        finally
        {
            if (room is not null) await room.DisposeAsync();
        }
    }
}
