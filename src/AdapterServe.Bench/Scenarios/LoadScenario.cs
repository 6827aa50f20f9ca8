using System.Diagnostics;
using AdapterServe.Adapters;
using AdapterServe.Bench.Adapters;
using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;
using AdapterServe.Engine;

namespace AdapterServe.Bench.Scenarios;

/// <summary>
/// Adapter load time, disk to ready: <c>--registered</c> r16 all-projection adapters published behind a device cache
/// of <c>--device-cache</c> and a host tier of one, so every sample names a version that is on neither tier and is
/// read from its file. Two definitions, each over <c>--load-samples</c> cold adapters:
/// <list type="bullet">
/// <item><c>load.ms_*</c> (the target): the residency cache alone, from <c>Acquire</c> until <c>TryGetReady</c> is true.</item>
/// <item><c>load.e2e_ms_*</c>: through the engine, a one-token request's time to first token minus the base model's
/// (base requests interleaved with the cold ones), which adds the engine's scheduling of a waiting sequence.</item>
/// </list>
/// <c>--warmup</c> unrecorded cold loads come first (<c>load.warmup_ms</c>). Resident memory before registering, after
/// registering, and after the loads.
/// </summary>
public sealed class LoadScenario : IScenario
{
    /// <summary>The host tier is kept to one version so that no sample is served from it.</summary>
    public const int HostSlots = 1;

    public bool UsesEngine => true;

    public async Task RunAsync(BenchContext context, BenchReport report, CancellationToken ct)
    {
        var o = context.Options;
        var adapter = AdapterCases.Table.Single(c => c.Name == "lora-r16");
        if (o.Registered <= o.DeviceCache)
            report.Notes.Add($"--registered {o.Registered} fits the device cache of {o.DeviceCache}: later samples may find their adapter resident");

        var model = EngineSession.PrepareModel(context);
        var directories = new AdapterDirectories(o.CacheDir, model.Name, model.Config, o.Seed, context.Log);
        var files = Enumerable.Range(0, Math.Min(o.DistinctFiles, o.Registered)).Select(i => directories.Ensure(adapter, i)).ToList();
        await using var room = AdapterRoom.Open(new AdapterRoomOptions(model.Config, o.Dtype, o.Device, o.DeviceCache, HostSlots), context.Loggers);
        await using var session = await EngineSession.StartAsync(context, report, model, maxBatch: 1, o.PromptTokens + o.MaxTokens, room, ct);
        report.Memory.Add(MachineProbe.Memory("before", context.Clock, withTorch: true));

        var register = Stopwatch.StartNew();
        var records = Enumerable.Range(0, o.Registered).Select(i => room.Register($"load-{i:D4}", files[i % files.Count])).ToList();
        report.Add(Figure.Of("load.register_ms_per_adapter", "ms", [register.Elapsed.TotalMilliseconds / records.Count]));
        report.Memory.Add(MachineProbe.Memory("registered", context.Clock, withTorch: true));
        context.Log($"registered {records.Count} adapters over {files.Count} distinct files in {register.Elapsed.TotalSeconds:0.00}s");

        // The next registered adapter (round robin) that is on neither tier; counted when none is left.
        int cursor = 0, residentPicks = 0;
        AdapterRecord NextCold()
        {
            for (int tried = 0; tried < records.Count; tried++)
            {
                var r = records[cursor++ % records.Count];
                if (room.Cache.Status(r.Name).Tier == ResidencyTier.Stored) return r;
            }
            residentPicks++;
            return records[cursor++ % records.Count];
        }

        var prompt = session.Prompts.Next(o.PromptTokens);
        async Task<double> TtftMs(IReadOnlyList<AdapterRef> adapters) =>
            (await GenerationDriver.RunAsync(session.Engine, GenerationDriver.Greedy(prompt, o.MaxTokens, adapters), ct)).TimeToFirstTokenSeconds * 1000;

        // Warm-up: --warmup cold loads before the samples. A fresh process maps new memory for each of its first loads;
        // once adapters have rotated through the device cache, freed tensors' memory is reused (the steady state of a
        // server). Kept apart as load.warmup_ms.
        var warmup = new List<ColdLoadSample>(o.Warmup);
        for (int i = 0; i < o.Warmup; i++) warmup.Add(await ColdLoad.TimeAsync(room.Cache, NextCold(), ct));
        if (warmup.Count > 0) context.Log($"load: {warmup.Count} warm-up loads, median {Stats.Median(warmup.Select(s => s.ReadyMs).ToList()):0.0} ms");
        await TtftMs([]);
        await TtftMs([new AdapterRef(NextCold().Name)]);

        // Disk -> ready through the residency cache alone (no request is running, so the engine thread is idle).
        var direct = new List<ColdLoadSample>(o.LoadSamples);
        for (int i = 0; i < o.LoadSamples; i++)
        {
            direct.Add(await ColdLoad.TimeAsync(room.Cache, NextCold(), ct));
            if ((i + 1) % Math.Max(1, o.LoadSamples / 5) == 0) context.Log($"load (cache): {i + 1}/{o.LoadSamples} samples, last {direct[^1].ReadyMs:0.0} ms");
        }

        // End to end: a cold one-token request, each after a base one-token request.
        var baseTtft = new List<double>(o.LoadSamples);
        var cold = new List<double>(o.LoadSamples);
        for (int i = 0; i < o.LoadSamples; i++)
        {
            baseTtft.Add(await TtftMs([]));
            cold.Add(await TtftMs([new AdapterRef(NextCold().Name)]));
            if ((i + 1) % Math.Max(1, o.LoadSamples / 5) == 0) context.Log($"load (engine): {i + 1}/{o.LoadSamples} samples, last cold ttft {cold[^1]:0.0} ms, base {baseTtft[^1]:0.0} ms");
        }
        double baseMs = Stats.Median(baseTtft);
        var e2e = cold.Select(ms => ms - baseMs).ToList();
        report.Memory.Add(MachineProbe.Memory("after", context.Clock, withTorch: true));

        var ready = direct.Select(s => s.ReadyMs).ToList();
        // Issue 5: adapter load p50 <= 50 ms for an r16 all-projection adapter of 135m.
        report.Add(new Figure("load.ms_p50", "ms", Stats.Percentile(ready, 50), ready, session.ModelName == "135m" ? new Target(AtMost: 50) : null));
        report.Add(new Figure("load.ms_p95", "ms", Stats.Percentile(ready, 95), ready));
        var read = direct.Select(s => s.ReadMs).ToList();
        report.Add(new Figure("load.read_ms_p50", "ms", Stats.Percentile(read, 50), read));
        if (warmup.Count > 0)
        {
            var first = warmup.Select(s => s.ReadyMs).ToList();
            report.Add(new Figure("load.warmup_ms_p50", "ms", Stats.Percentile(first, 50), first));
        }
        report.Add(new Figure("load.e2e_ms_p50", "ms", Stats.Percentile(e2e, 50), e2e));
        report.Add(new Figure("load.e2e_ms_p95", "ms", Stats.Percentile(e2e, 95), e2e));
        report.Add(new Figure("load.cold_ttft_ms_p50", "ms", Stats.Percentile(cold, 50), cold));
        report.Add(Figure.Of("load.base_ttft_ms", "ms", baseTtft));
        var before = report.Memory[0];
        var after = report.Memory[^1];
        report.Add(new Ratio("load.working_set.after/before", "memory.after.working_set_bytes", "memory.before.working_set_bytes", (double)after.WorkingSetBytes / before.WorkingSetBytes));

        var residency = room.Cache.Snapshot();
        report.Notes.Add($"load.ms = residency cache Acquire -> TryGetReady (disk -> device); load.e2e_ms = cold one-token request's time to first token - the base's ({baseMs:0.0} ms)");
        report.Notes.Add($"resident at the end: {residency.DeviceAdapters} adapters on the device ({residency.DeviceBytes / 1e6:0.0} MB), {residency.HostAdapters} on the host ({residency.HostBytes / 1e6:0.0} MB)");
        if (residentPicks > 0)
            report.Notes.Add($"{residentPicks} samples found their adapter already resident (every registered adapter was): raise --registered");
    }
}
