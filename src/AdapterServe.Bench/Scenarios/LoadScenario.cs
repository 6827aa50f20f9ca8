using System.Diagnostics;
using AdapterServe.Bench.Adapters;
using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;
using AdapterServe.Engine;

namespace AdapterServe.Bench.Scenarios;

/// <summary>
/// Adapter load time, disk to ready: many r16 all-projection adapters registered behind a small device cache;
/// each sample sends a one-token request on an adapter that is not resident, and its time to first token minus the
/// base model's is the load time. Resident memory before registering, after registering, and after the loads.
/// </summary>
public sealed class LoadScenario : IScenario
{
    public bool UsesEngine => true;

    public async Task RunAsync(BenchContext context, BenchReport report, CancellationToken ct)
    {
        var o = context.Options;
        if (!AdapterRoom.IsAvailable) throw new ScenarioUnavailableException($"load: {AdapterRoom.MissingBinder}");
        var adapter = AdapterCases.Table.Single(c => c.Name == "lora-r16");
        if (o.Registered <= o.DeviceCache)
            report.Notes.Add($"--registered {o.Registered} fits the device cache of {o.DeviceCache}: later samples may find their adapter resident");
        if (o.DistinctFiles <= o.DeviceCache)
            report.Notes.Add($"--distinct-files {o.DistinctFiles} <= device cache {o.DeviceCache}: a store that shares identical files would serve samples from the cache");

        var model = EngineSession.PrepareModel(context);
        var directories = new AdapterDirectories(o.CacheDir, model.Name, model.Config, o.Seed, context.Log);
        var files = Enumerable.Range(0, Math.Min(o.DistinctFiles, o.Registered)).Select(i => directories.Ensure(adapter, i)).ToList();
        await using var room = AdapterRoom.Open(new AdapterRoomOptions(model.Directory, model.Config, o.Dtype, o.Device, o.DeviceCache, Path.Combine(directories.Root, "store")));
        await using var session = await EngineSession.StartAsync(context, report, model, maxBatch: 1, o.PromptTokens + o.MaxTokens, room.Binder, ct);
        report.Memory.Add(MachineProbe.Memory("before", context.Clock, withTorch: true));

        var names = Enumerable.Range(0, o.Registered).Select(i => $"load-{i:D4}").ToList();
        var register = Stopwatch.StartNew();
        for (int i = 0; i < names.Count; i++) room.Register(names[i], files[i % files.Count]);
        report.Add(Figure.Of("load.register_ms_per_adapter", "ms", [register.Elapsed.TotalMilliseconds / names.Count]));
        report.Memory.Add(MachineProbe.Memory("registered", context.Clock, withTorch: true));
        context.Log($"registered {names.Count} adapters over {files.Count} distinct files in {register.Elapsed.TotalSeconds:0.00}s");

        var prompt = session.Prompts.Next(o.PromptTokens);
        async Task<double> TtftMs(IReadOnlyList<AdapterRef> adapters) =>
            (await GenerationDriver.RunAsync(session.Engine, GenerationDriver.Greedy(prompt, o.MaxTokens, adapters), ct)).TimeToFirstTokenSeconds * 1000;

        var baseTtft = await session.MeasureAsync("base ttft", () => TtftMs([]), ms => $"{ms:0.00} ms");
        double baseMs = Stats.Median(baseTtft.ToList());
        report.Add(Figure.Of("load.base_ttft_ms", "ms", baseTtft));

        // Warm-up: one cold load outside the sampled names (the first load also pays one-time costs).
        for (int i = 0; i < o.Warmup; i++) await TtftMs([new AdapterRef(names[^(1 + i % names.Count)])]);
        var cold = new List<double>(o.LoadSamples);
        for (int i = 0; i < o.LoadSamples; i++)
        {
            cold.Add(await TtftMs([new AdapterRef(names[i % names.Count])]));
            if ((i + 1) % Math.Max(1, o.LoadSamples / 10) == 0) context.Log($"load: {i + 1}/{o.LoadSamples} samples, last {cold[^1] - baseMs:0.0} ms");
        }
        var load = cold.Select(ms => ms - baseMs).ToList();
        report.Memory.Add(MachineProbe.Memory("after", context.Clock, withTorch: true));

        // Issue 5: adapter load p50 <= 50 ms for an r16 all-projection adapter of 135m.
        report.Add(new Figure("load.ms_p50", "ms", Stats.Percentile(load, 50), load, session.ModelName == "135m" ? new Target(AtMost: 50) : null));
        report.Add(new Figure("load.ms_p95", "ms", Stats.Percentile(load, 95), load));
        report.Add(new Figure("load.cold_ttft_ms_p50", "ms", Stats.Percentile(cold, 50), cold));
        var before = report.Memory[0];
        var after = report.Memory[^1];
        report.Add(new Ratio("load.working_set.after/before", "memory.after.working_set_bytes", "memory.before.working_set_bytes", (double)after.WorkingSetBytes / before.WorkingSetBytes));
    }
}
