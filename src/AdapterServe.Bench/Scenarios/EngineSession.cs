using AdapterServe.Bench.Adapters;
using AdapterServe.Bench.Driving;
using AdapterServe.Bench.Models;
using AdapterServe.Bench.Reporting;
using AdapterServe.Engine;
using AdapterServe.Modeling;

namespace AdapterServe.Bench.Scenarios;

/// <summary>The synthetic model of <c>--model-config</c>, written once to the cache, then loaded by a real engine.</summary>
public sealed class EngineSession : IAsyncDisposable
{
    private readonly BenchContext _context;
    private readonly BenchEngine _engine;

    public string ModelName { get; }
    public IGenerationEngine Engine => _engine.Engine;
    public Prompts Prompts { get; }

    private EngineSession(BenchContext context, string modelName, BenchEngine engine)
    {
        _context = context;
        ModelName = modelName;
        _engine = engine;
        Prompts = new Prompts(engine.Engine.Tokenizer, engine.Engine.Config.VocabSize, context.Options.Seed);
    }

    /// <summary>Resolves <c>--model-config</c> and makes sure its directory is in the cache.</summary>
    public static (string Name, ModelConfig Config, string Directory) PrepareModel(BenchContext context)
    {
        var (name, config) = ModelSizes.Resolve(context.Options.ModelConfig);
        string dir = SyntheticModelCache.Ensure(context.Options.CacheDir, name, config, context.Options.Seed, context.Log);
        return (name, config, dir);
    }

    /// <param name="longestSequence">Prompt plus completion tokens of the longest request the scenario sends.</param>
    /// <param name="adapters">The Adapters room the engine binds requests through (null: base model only); the engine hands it the base weights once loaded.</param>
    public static async Task<EngineSession> StartAsync(BenchContext context, BenchReport report, (string Name, ModelConfig Config, string Directory) model,
        int maxBatch, int longestSequence, AdapterRoom? adapters, CancellationToken ct)
    {
        var o = context.Options;
        if (longestSequence > model.Config.MaxPositionEmbeddings)
            throw new UsageException($"this scenario needs sequences of {longestSequence} tokens (prompt + max tokens), but {model.Name} has max_position_embeddings {model.Config.MaxPositionEmbeddings}: lower --prompt-lengths, --prompt-tokens or --max-tokens");
        // A context just long enough keeps the KV cache (slots x context x layers) small.
        int contextLength = Math.Min(model.Config.MaxPositionEmbeddings, (longestSequence + 1 + 63) / 64 * 64);
        var options = new EngineOptions
        {
            ModelPath = model.Directory,
            ServedModelName = model.Name,
            Device = o.Device,
            Dtype = o.Dtype,
            MaxBatch = maxBatch,
            MaxQueue = Math.Max(256, 2 * maxBatch),
            MaxContext = contextLength,
        };
        context.Log($"loading {model.Name} ({o.Dtype} on {o.Device}, batch {maxBatch}, context {contextLength})");
        var engine = await BenchEngine.StartAsync(options, context.Loggers, adapters?.Binder, ct);
        var c = engine.Engine.Config;
        report.Model = new ModelSummary(model.Name, model.Directory, c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads,
            c.IntermediateSize, c.VocabSize, c.TieWordEmbeddings, ModelSizes.ParameterCount(c), engine.Engine.ContextLength, engine.LoadTime.TotalSeconds);
        context.Log($"loaded in {engine.LoadTime.TotalSeconds:0.00}s");
        return new EngineSession(context, model.Name, engine);
    }

    /// <summary>
    /// Several lines measured in rounds: <c>--warmup</c> unrecorded passes of every line, then <c>--repeats</c> rounds
    /// in which every line runs once, back to back; result i holds line i's runs in round order (see <see cref="Ratio.OfRounds"/>).
    /// </summary>
    public async Task<IReadOnlyList<IReadOnlyList<T>>> MeasureRoundsAsync<T>(IReadOnlyList<(string Label, Func<Task<T>> Pass)> lines, Func<T, string> describe)
    {
        var o = _context.Options;
        for (int i = 0; i < o.Warmup; i++)
            foreach (var (_, pass) in lines) await pass();
        var results = lines.Select(_ => new List<T>(o.Repeats)).ToList();
        for (int round = 0; round < o.Repeats; round++)
            for (int line = 0; line < lines.Count; line++)
            {
                var r = await lines[line].Pass();
                results[line].Add(r);
                _context.Log($"{lines[line].Label}: round {round + 1}/{o.Repeats}: {describe(r)}");
            }
        return results;
    }

    public ValueTask DisposeAsync() => _engine.DisposeAsync();
}
