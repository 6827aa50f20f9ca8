using System.Collections.Concurrent;
using System.Diagnostics;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Bench.Adapters;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Kronecker;
using Microsoft.Extensions.Logging;
using static TorchSharp.torch;
using Store = AdapterServe.Adapters.Store.AdapterStore;

namespace AdapterServe.Tests.Reliability;

/// <summary>
/// One adapter kind the engine serves: how to build a test adapter of it (null: the base model), and its scale. Kinds
/// whose folder is more than a PEFT config and one safetensors file (mixtures) write it with <see cref="WriteFolder"/>
/// (model, seed, directory) instead.
/// </summary>
public sealed record StressKind(string Name, Func<ModelConfig, int, TestAdapter?> Build, float Scale = 1f,
    Action<ModelConfig, int, string>? WriteFolder = null);

/// <summary>
/// Issue 8, part 2: thousands of forward steps of every adapter kind, alone and in one mixed batch, while other threads
/// force full collections, run pending finalizers and churn the heap. A Scalar that TorchSharp hands to libtorch without
/// keeping it alive is freed mid-call under this load (libtorch "Expected false to be true … toFloat"), which fails the
/// whole step; the fixed code must go through without a single failed step or changed token.
/// </summary>
[Collection(GcPressureCollection.Name)]
public class ScalarLifetimeStressTests(ITestOutputHelper output)
{
    private static readonly ModelConfig Model = TinyModels.Llama;

    /// <summary>Every kind the engine serves. A new kind (LoKr, MoKA, mixtures…) is one more line here. Mixture names are
    /// unique in the test process: expert counts (ExpertUsage.Shared) are kept per adapter name process-wide.</summary>
    public static readonly StressKind[] Kinds =
    [
        new("base", (_, _) => null),
        new("lora", (m, seed) => TestAdapter.Lora(r: 4, alpha: 8, projections: ProjectionNames.All, seed: seed, baseModel: m), Scale: 0.75f),
        new("lora-bias", (m, seed) => WithBias(TestAdapter.Lora(r: 2, alpha: 4, projections: ProjectionNames.All, seed: seed, baseModel: m), m, seed)),
        new("rslora", (m, seed) => WithConfig(TestAdapter.Lora(r: 4, alpha: 6, projections: ProjectionNames.All, seed: seed, baseModel: m), "use_rslora")),
        new("dora", (m, seed) => WithDora(TestAdapter.Lora(r: 2, alpha: 4, projections: ProjectionNames.All, seed: seed, baseModel: m), m, seed), Scale: 0.5f),
        new("kasa", (m, seed) => WithKasa(TestAdapter.Lora(r: 2, alpha: 4, projections: ProjectionNames.All, seed: seed, baseModel: m), m, seed)),
        new("lokr", (m, seed) => KroneckerTestFiles.Lokr(m, ProjectionNames.All, r: 2, alpha: 3, w1: FactorForm.LowRank, seed: seed), Scale: 0.8f),
        new("moka", (m, seed) => KroneckerServingTests.Moka(seed, m)),     // four components of three shapes per module
        new("stress-lora-mixer", (_, _) => null, WriteFolder: (m, seed, dir) =>
            MixtureWriters.WriteLoraMixer(dir, m, experts: 4, topK: 2, rank: 2, Enum.GetValues<Projection>(), seed), Scale: 0.8f),
        new("stress-omoe", (_, _) => null, WriteFolder: (m, seed, dir) =>
            MixtureWriters.WriteOmoe(dir, m, experts: 3, rank: 2, Enum.GetValues<Projection>(), seed, topK: 2)),
        new("stress-smore", (_, _) => null, WriteFolder: (m, seed, dir) =>
            SmoreWriter.Write(dir, m, SmoreWriter.TwoByFour, [Projection.Gate, Projection.Up, Projection.Down], seed)),
    ];

    private const int Rounds = 8;           // each: every kind alone, then all kinds in one batch
    private const int TokensPerRequest = 24; // one decode step per token

    [Fact]
    public async Task Every_adapter_kind_runs_thousands_of_steps_under_forced_collections_without_a_failed_step()
    {
        var errors = new ConcurrentQueue<string>();
        using var tmp = new TempDir();
        await using var f = await StressEngine.StartAsync(TinyModels.Directory(Model), errors);
        for (int i = 0; i < Kinds.Length; i++)
            if (Kinds[i].WriteFolder is { } write)
            {
                string dir = tmp.Sub(Kinds[i].Name);
                write(Model, 100 + i, dir);
                await f.Store.RegisterPathAsync(Kinds[i].Name, dir, replace: false);
            }
            else if (Kinds[i].Build(Model, 100 + i) is { } adapter)
                await f.Store.RegisterPathAsync(Kinds[i].Name, adapter.WriteTo(tmp.Sub(Kinds[i].Name)), replace: false);

        // References, computed alone and before any pressure: what every request must produce, token for token.
        var reference = new List<int>[Kinds.Length];
        for (int i = 0; i < Kinds.Length; i++) reference[i] = (await RunAsync(f.Engine, i)).Tokens;
        Assert.True(Kinds.Skip(1).Select((_, i) => reference[i + 1]).Any(r => !r.SequenceEqual(reference[0])),
            "no adapter changes the output: the comparison would prove nothing");

        int steps = 0, requests = 0;
        using (var pressure = new GcPressure())
        {
            for (int round = 0; round < Rounds && errors.IsEmpty; round++)
            {
                for (int i = 0; i < Kinds.Length; i++)                       // alone: a batch of one kind
                {
                    Check(await RunAsync(f.Engine, i), i, reference, errors);
                    steps += TokensPerRequest;
                    requests++;
                }
                var mixed = await Task.WhenAll(Enumerable.Range(0, Kinds.Length).Select(i => RunAsync(f.Engine, i)));
                for (int i = 0; i < Kinds.Length; i++) Check(mixed[i], i, reference, errors);
                steps += TokensPerRequest;                                   // the kinds share these steps
                requests += Kinds.Length;
            }
            output.WriteLine($"{requests} requests, ≥ {steps} forward steps, {pressure.Collections} forced full collections of {pressure.MeanCollection.TotalMilliseconds:0.0} ms on average, {pressure.YoungCollections} forced gen0 collections between them");
        }
        Assert.True(errors.IsEmpty, $"{errors.Count} failure(s) under GC pressure; first:\n{string.Join("\n---\n", errors.Take(3))}");
        Assert.True(steps >= 2000, $"only {steps} steps ran");
    }

    private sealed record Outcome(List<int> Tokens, FinishReason Reason, string? Error);

    private static async Task<Outcome> RunAsync(GenerationEngine engine, int kind)
    {
        int[] prompt = [1 + kind, 7, 3 + kind, 11, 13, 2 * kind + 5, 17, 19];
        var request = EngineRunner.Greedy(prompt, TokensPerRequest) with
        {
            Adapters = kind == 0 ? [] : [new AdapterRef(Kinds[kind].Name, Kinds[kind].Scale)],
        };
        var tokens = new List<int>();
        FinishEvent? finish = null;
        await foreach (var e in engine.Submit(request, CancellationToken.None).ReadAllAsync(CancellationToken.None))
        {
            if (e is TokenEvent t) tokens.Add(t.TokenId);
            else if (e is FinishEvent fe) finish = fe;
        }
        return new Outcome(tokens, finish?.Reason ?? FinishReason.Error, finish?.Error ?? (finish is null ? "no finish event" : null));
    }

    private static void Check(Outcome outcome, int kind, List<int>[] reference, ConcurrentQueue<string> errors)
    {
        if (outcome.Reason != FinishReason.Length)
            errors.Enqueue($"{Kinds[kind].Name}: finished {outcome.Reason}: {outcome.Error}");
        else if (!outcome.Tokens.SequenceEqual(reference[kind]))
            errors.Enqueue($"{Kinds[kind].Name}: tokens [{string.Join(",", outcome.Tokens)}] differ from [{string.Join(",", reference[kind])}] computed without GC pressure");
    }

    private static TestAdapter WithConfig(TestAdapter a, string flag)
    {
        a.Config[flag] = true;
        return a;
    }

    /// <summary>lora_B.bias on every module (PEFT's lora_bias).</summary>
    private static TestAdapter WithBias(TestAdapter a, ModelConfig m, int seed) =>
        WithVector(WithConfig(a, "lora_bias"), m, seed, ".lora_B.bias", p => m.ProjectionShape(p).Out, r => r.NextDouble() - 0.5);

    /// <summary>DoRA: a positive magnitude per output row of every module.</summary>
    private static TestAdapter WithDora(TestAdapter a, ModelConfig m, int seed) =>
        WithVector(WithConfig(a, "use_dora"), m, seed, ".lora_magnitude_vector", p => m.ProjectionShape(p).Out, r => 0.5 + r.NextDouble());

    /// <summary>KaSA: σ of the rank components of every module.</summary>
    private static TestAdapter WithKasa(TestAdapter a, ModelConfig m, int seed) =>
        WithVector(WithConfig(a, "use_kasa"), m, seed, ".lora_diag", _ => a.Config["r"]!.GetValue<int>(), r => r.NextDouble() - 0.5);

    private static TestAdapter WithVector(TestAdapter a, ModelConfig m, int seed, string suffix, Func<Projection, int> length, Func<Random, double> value)
    {
        var random = new Random(seed);
        for (int layer = 0; layer < m.NumHiddenLayers; layer++)
            foreach (var p in ProjectionNames.All)
            {
                int n = length(p);
                a.Tensors.Add(new TestTensor(TestAdapter.Prefix(layer, p) + suffix, [n], Enumerable.Range(0, n).Select(_ => (float)value(random)).ToArray()));
            }
        return a;
    }

    /// <summary>
    /// Full blocking collections with finalizers run to completion in a loop on one thread (the loop of issue 8), forced
    /// gen0 collections with finalizers between them, and short-lived allocations on another thread so that collections
    /// also land at arbitrary points.
    /// </summary>
    private sealed class GcPressure : IDisposable
    {
        private volatile bool _stop;
        private readonly Thread _collector;
        private readonly Thread _allocator;
        private long _collections, _collectionTicks, _youngCollections;

        public GcPressure()
        {
            _collector = new Thread(() =>
            {
                while (!_stop)
                {
                    long start = Stopwatch.GetTimestamp();
                    GC.Collect();
                    GC.WaitForPendingFinalizers();
                    var took = Stopwatch.GetElapsedTime(start);
                    Interlocked.Increment(ref _collections);
                    Interlocked.Add(ref _collectionTicks, took.Ticks);
                    // As long again before the next full one: full collections back to back (each stops every thread)
                    // made a step take 0.2 s, and one costs more the larger the test process's heap has grown (~70 ms at
                    // the end of the suite). Meanwhile cheap gen0 collections with finalizers keep freeing the step's
                    // fresh garbage (a Scalar is young) every millisecond or so.
                    long until = Stopwatch.GetTimestamp() + Math.Max(took.Ticks * Stopwatch.Frequency / TimeSpan.TicksPerSecond, Stopwatch.Frequency / 1000);
                    do
                    {
                        GC.Collect(0, GCCollectionMode.Forced, blocking: true);
                        GC.WaitForPendingFinalizers();
                        Interlocked.Increment(ref _youngCollections);
                        Thread.Sleep(1);
                    } while (!_stop && Stopwatch.GetTimestamp() < until);
                }
            }) { IsBackground = true, Name = "gc-collector" };
            _allocator = new Thread(() =>
            {
                var keep = new object[64];
                for (long i = 0; !_stop; i++) keep[i & 63] = new byte[(i & 7) * 64 + 32];
                GC.KeepAlive(keep);
            }) { IsBackground = true, Name = "gc-allocator" };
            _collector.Start();
            _allocator.Start();
        }

        public long Collections => Interlocked.Read(ref _collections);
        public long YoungCollections => Interlocked.Read(ref _youngCollections);
        public TimeSpan MeanCollection => TimeSpan.FromTicks(Interlocked.Read(ref _collectionTicks) / Math.Max(1, Collections));

        public void Dispose()
        {
            _stop = true;
            _collector.Join();
            _allocator.Join();
        }
    }

    /// <summary>The serving stack without HTTP (as AdapterEngineFixture) with the engine's error log captured.</summary>
    private sealed class StressEngine : IAsyncDisposable
    {
        public required GenerationEngine Engine { get; init; }
        public required Store Store { get; init; }
        public required AdapterResidencyCache Cache { get; init; }
        public required TempDir Data { get; init; }
        public required ILoggerFactory Loggers { get; init; }

        public static async Task<StressEngine> StartAsync(string modelDir, ConcurrentQueue<string> errors)
        {
            var config = ModelConfig.Load(Path.Combine(modelDir, "config.json"));
            var cache = new AdapterResidencyCache(new ResidencyOptions { MaxDeviceAdapters = Kinds.Length }, baseWeights: null, CPU, ScalarType.Float32);
            var registry = new AdapterRegistry();
            var loggers = LoggerFactory.Create(b => b.AddProvider(new ErrorLog(errors)));
            var engine = GenerationEngine.Start(new EngineOptions { ModelPath = modelDir, MaxBatch = 8, MaxContext = 128 }, loggers,
                new RegistryAdapterBinder(registry, cache));
            while (!engine.IsReady)
            {
                if (engine.LoadError is { } e) throw new InvalidOperationException("model load failed", e);
                await Task.Delay(10);
            }
            var data = new TempDir();
            return new StressEngine
            {
                Engine = engine, Cache = cache, Data = data, Loggers = loggers,
                Store = new Store(new AdapterStoreOptions { DataDirectory = data.Path }, config, cache, registry),
            };
        }

        public async ValueTask DisposeAsync()
        {
            await Engine.DisposeAsync();
            Cache.Dispose();
            Data.Dispose();
            Loggers.Dispose();
        }
    }

    /// <summary>Every error the engine logs (a failed step, even one a later retry would hide) with its exception.</summary>
    private sealed class ErrorLog(ConcurrentQueue<string> errors) : ILoggerProvider, ILogger
    {
        public ILogger CreateLogger(string categoryName) => this;
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Error;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel)) errors.Enqueue($"engine log: {formatter(state, exception)}\n{exception}");
        }
        public void Dispose() { }
    }
}

/// <summary>
/// Forced collections stop every thread of the process: the stress test runs alone, after the parallel tests, so that
/// it neither slows them nor is slowed by them.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GcPressureCollection
{
    public const string Name = "GcPressure";
}
