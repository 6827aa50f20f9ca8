using System.Diagnostics;
using AdapterServe.Bench.Adapters;
using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Reporting;
using AdapterServe.Engine;

namespace AdapterServe.Bench.Scenarios;

/// <summary>
/// Many generations (each on the base or a random adapter; the base alone with <c>--soak-adapters 0</c>) at a fixed
/// concurrency, with resident memory at the start, the middle and the end: a leak shows as end &gt; middle. Meanwhile a
/// churn loop unloads, loads and replaces the adapters (<c>--churn-cycles</c>), and every answer is checked token for token
/// against the text its adapter version gives when run alone.
/// </summary>
public sealed class SoakScenario : IScenario
{
    /// <summary>Distinct prompts; each (weights, prompt) pair has one solo reference answer.</summary>
    private const int PromptCount = 8;

    public bool UsesEngine => true;

    public async Task RunAsync(BenchContext context, BenchReport report, CancellationToken ct)
    {
        var o = context.Options;
        var model = EngineSession.PrepareModel(context);
        AdapterRoom? room = null;
        // Weight variants: index 0 is the base, 1..V the adapter directories. Names start on their own variant.
        var variants = new List<string?> { null };
        if (o.SoakAdapters > 0)
        {
            var adapter = AdapterCases.Table.Single(c => c.Name == "lora-r16");
            var directories = new AdapterDirectories(o.CacheDir, model.Name, model.Config, o.Seed, context.Log);
            // Host tier as small as the device's: with more adapters than slots, evicted ones are read from disk again
            // (tensors created and disposed all along the run, which is what a leak would show on).
            room = AdapterRoom.Open(new AdapterRoomOptions(model.Config, o.Dtype, o.Device, o.DeviceCache, HostSlots: o.DeviceCache), context.Loggers);
            for (int i = 0; i < o.SoakAdapters; i++) variants.Add(directories.Ensure(adapter, i));
            report.Notes.Add($"each generation on the base or one of {o.SoakAdapters} r16 all-projection adapters, uniformly at random, behind a device cache of {o.DeviceCache} and a host cache of {o.DeviceCache}");
            report.Notes.Add($"churn: {o.ChurnCycles} cycles, each an unload, a load and a replace of a random adapter (new version, random weights of {o.SoakAdapters}) while generations run");
        }
        else
            report.Notes.Add("soak on the base model alone (--soak-adapters 0)");

        try
        {
            await using var session = await EngineSession.StartAsync(context, report, model, o.Concurrency, o.PromptTokens + o.MaxTokens, room, ct);
            var prompts = Enumerable.Range(0, PromptCount).Select(_ => session.Prompts.Next(o.PromptTokens)).ToList();
            var expected = await SoloAnswersAsync(session.Engine, room, variants, prompts, o.MaxTokens, ct);
            var names = new AdapterNames(room, variants);
            names.PublishAll();

            var random = new Random(o.Seed);
            var pick = new Lock();
            (GenerationRequest Request, int Variant, int Prompt) Draw()
            {
                lock (pick)
                {
                    int p = random.Next(prompts.Count);
                    int n = random.Next(names.Count + 1) - 1;                         // -1 = the base
                    return (GenerationDriver.Greedy(prompts[p], o.MaxTokens), n, p);
                }
            }

            for (int w = 0; w < o.Warmup; w++)
                await GenerationDriver.RunAllAsync(session.Engine, Enumerable.Range(0, o.Concurrency).Select(i => GenerationDriver.Greedy(prompts[i % prompts.Count], o.MaxTokens)), ct);
            report.Memory.Add(MachineProbe.Memory("start", context.Clock, withTorch: true));

            int started = 0, completed = 0, errors = 0, mismatches = 0;
            long tokens = 0;
            var ttft = new List<double>();
            string? firstError = null;
            var clock = Stopwatch.StartNew();
            void Fail(string message, ref int counter)
            {
                Interlocked.Increment(ref counter);
                Interlocked.CompareExchange(ref firstError, message, null);
            }
            async Task Worker()
            {
                int j;
                while ((j = Interlocked.Increment(ref started) - 1) < o.Generations)
                {
                    // Generation j starts once ⌊(j + 1)·cycles / generations⌋ churn cycles ran, so every cycle runs while
                    // generations do, however fast they are (the churn paces itself the other way: no deadlock either way round).
                    if (room is not null)
                        while (names.Cycles < (long)(j + 1) * o.ChurnCycles / o.Generations) await Task.Delay(1, ct);
                    var (request, name, prompt) = Draw();
                    try
                    {
                        // The version a request runs on is fixed when it is submitted (its lease), so the expected
                        // answer is that of the variant the name pointed at then.
                        long submitted = Stopwatch.GetTimestamp();
                        var (events, variant) = names.Submit(session.Engine, request, name, ct);
                        var trace = await GenerationDriver.ReadAsync(session.Engine, request, events, submitted, ct);
                        Interlocked.Add(ref tokens, trace.TokenTimes.Count);
                        lock (ttft) ttft.Add(trace.TimeToFirstTokenSeconds * 1000);
                        if (!trace.Tokens.SequenceEqual(expected[(variant, prompt)]))
                        {
                            var like = expected.Where(e => e.Key.Prompt == prompt && e.Value.SequenceEqual(trace.Tokens)).Select(e => names.Describe(e.Key.Variant)).ToList();
                            Fail($"request {request.RequestId} on {names.Describe(variant)} answered [{string.Join(' ', trace.Tokens)}], alone it answers [{string.Join(' ', expected[(variant, prompt)])}]" +
                                (like.Count > 0 ? $" (that is the answer of {string.Join(", ", like)})" : ""), ref mismatches);
                        }
                    }
                    catch (BenchException e)
                    {
                        Fail(e.Message, ref errors);
                    }
                    int done = Interlocked.Increment(ref completed);
                    if (done == o.Generations / 2)
                        lock (report.Memory) report.Memory.Add(MachineProbe.Memory("middle", context.Clock, withTorch: true));
                    if (done % Math.Max(1, o.Generations / 10) == 0) context.Log($"soak: {done}/{o.Generations} generations, {names.Cycles} churn cycles");
                }
            }
            using var stopChurn = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var churn = room is null ? Task.CompletedTask
                : Task.Run(() => names.ChurnAsync(o.ChurnCycles, o.Seed, () => Volatile.Read(ref completed), o.Generations, stopChurn.Token), ct);
            await Task.WhenAll(Enumerable.Range(0, o.Concurrency).Select(_ => Task.Run(Worker, ct)));
            double seconds = clock.Elapsed.TotalSeconds;
            await stopChurn.CancelAsync();
            await churn;
            report.Memory.Add(MachineProbe.Memory("end", context.Clock, withTorch: true));

            report.Add(Figure.Of("soak.generations", "count", [completed]));
            report.Add(Figure.Of("soak.errors", "count", [errors]));
            report.Add(Figure.Of("soak.mismatches", "count", [mismatches]));
            report.Add(Figure.Of("soak.churn_cycles", "count", [names.Cycles]));
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
            if (errors + mismatches > 0)
                report.Errors.Add($"{errors} of {o.Generations} generations failed and {mismatches} answered differently from their adapter version alone; the first: {firstError}");
            if (room is not null && names.Cycles < o.ChurnCycles)
                report.Errors.Add($"only {names.Cycles} of {o.ChurnCycles} churn cycles ran while the generations did");
        }
        finally
        {
            if (room is not null) await room.DisposeAsync();
        }
    }

    /// <summary>Each (variant, prompt)'s answer with nothing else running: the reference every soak answer must equal.</summary>
    private static async Task<Dictionary<(int Variant, int Prompt), IReadOnlyList<int>>> SoloAnswersAsync(
        IGenerationEngine engine, AdapterRoom? room, IReadOnlyList<string?> variants, IReadOnlyList<IReadOnlyList<int>> prompts, int maxTokens, CancellationToken ct)
    {
        var answers = new Dictionary<(int, int), IReadOnlyList<int>>();
        for (int v = 0; v < variants.Count; v++)
        {
            string? name = variants[v] is { } dir ? $"soak-reference-{v}" : null;
            if (name is not null) room!.Publish(name, variants[v]!, 1);
            IReadOnlyList<AdapterRef> adapters = name is null ? [] : [new AdapterRef(name)];
            for (int p = 0; p < prompts.Count; p++)
                answers[(v, p)] = (await GenerationDriver.RunAsync(engine, GenerationDriver.Greedy(prompts[p], maxTokens, adapters), ct)).Tokens;
            if (name is not null) room!.Unregister(name);
        }
        return answers;
    }

    /// <summary>
    /// The soak's adapter names and which weight variant each currently serves. Submits and churn operations take one lock,
    /// so a request's expected answer is known exactly.
    /// </summary>
    private sealed class AdapterNames(AdapterRoom? room, IReadOnlyList<string?> variants)
    {
        private readonly Lock _lock = new();
        private readonly int?[] _variant = Enumerable.Range(1, variants.Count - 1).Select(v => (int?)v).ToArray();   // per name; null = unloaded
        private readonly int[] _version = Enumerable.Repeat(1, variants.Count - 1).ToArray();
        private int _cycles;

        public int Count => _variant.Length;
        public int Cycles => Volatile.Read(ref _cycles);

        private static string Name(int i) => $"soak-{i}";

        public string Describe(int variant) => variant == 0 ? "the base" : $"adapter weights #{variant}";

        /// <summary>Submits <paramref name="request"/> on name <paramref name="name"/> (-1, or a name that is unloaded right now: the base).</summary>
        public (System.Threading.Channels.ChannelReader<GenerationEvent> Events, int Variant) Submit(IGenerationEngine engine, GenerationRequest request, int name, CancellationToken ct)
        {
            lock (_lock)
            {
                int variant = name >= 0 && _variant[name] is int v ? v : 0;
                var r = variant == 0 ? request : request with { Adapters = [new AdapterRef(Name(name))] };
                try { return (engine.Submit(r, ct), variant); }
                catch (Exception e) when (e is QueueFullException or AdapterNotFoundException or ArgumentException)
                {
                    throw new BenchException($"the engine refused request {request.RequestId} ({Describe(variant)}): {e.Message}", e);
                }
            }
        }

        /// <summary>
        /// Until <paramref name="cycles"/> cycles ran or <paramref name="ct"/> fires: unload a random name, load it again on random
        /// weights, replace it with other random weights. Paced so the cycles spread over the generations.
        /// </summary>
        public async Task ChurnAsync(int cycles, int seed, Func<int> completed, int generations, CancellationToken ct)
        {
            var random = new Random(seed + 1);
            try
            {
                while (Cycles < cycles && !ct.IsCancellationRequested)
                {
                    int i = random.Next(Count);
                    lock (_lock)
                    {
                        room!.Unregister(Name(i));
                        _variant[i] = null;
                    }
                    await Task.Yield();
                    Load(i, random.Next(1, variants.Count));
                    await Task.Yield();
                    Load(i, random.Next(1, variants.Count));
                    Interlocked.Increment(ref _cycles);
                    // Spread the cycles over the run: after k cycles, wait until ⌊k·generations / cycles⌋ generations are done.
                    while (!ct.IsCancellationRequested && completed() < (long)Cycles * generations / cycles)
                        await Task.Delay(2, ct);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
        }

        private void Load(int i, int variant)
        {
            lock (_lock)
            {
                room!.Publish(Name(i), variants[variant]!, ++_version[i]);
                _variant[i] = variant;
            }
        }

        /// <summary>Version 1 of every name, each on its own weights; call before the first submit and before the churn.</summary>
        public void PublishAll()
        {
            lock (_lock)
                for (int i = 0; i < Count; i++) room!.Publish(Name(i), variants[i + 1]!, _version[i]);
        }
    }
}
