using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Llama;
using AdapterServe.Modeling.Tokenization;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Engine;

/// <summary>
/// Continuous batching over one resident model. A dedicated thread owns every tensor and loops
/// schedule → execute → update; requests join and leave the batch between steps.
/// </summary>
public sealed partial class GenerationEngine : IGenerationEngine, IAsyncDisposable
{
    private readonly EngineOptions _options;
    private readonly ILogger _logger;
    private readonly string _modelDirectory;
    private readonly IAdapterBinder? _adapters;
    private readonly ConcurrentQueue<RequestState> _incoming = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Thread _thread;
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<Sequence> _waiting = [];
    private readonly List<Sequence> _running = [];
    private volatile bool _stopping;
    private volatile bool _ready;
    private volatile Exception? _loadError;
    private int _waitingRequests;
    private int _runningSequences;
    private LlamaModel? _model;
    private KvCache? _cache;

    public ModelInfo Model { get; }
    public ITextTokenizer Tokenizer { get; }
    public ModelConfig Config { get; }
    public bool IsReady => _ready;
    public Exception? LoadError => _loadError;
    public int RunningSequences => Volatile.Read(ref _runningSequences);
    public int WaitingRequests => Volatile.Read(ref _waitingRequests);
    public EngineLoad Load => Volatile.Read(ref _load);
    private EngineLoad _load = EngineLoad.Idle;
    public int ContextLength { get; }
    /// <summary>Live TorchSharp tensors of the engine thread after the last step (dispose-scope statistics are per thread). Must not grow.</summary>
    public long LiveTensors => Interlocked.Read(ref _liveTensors);
    private long _liveTensors;

    /// <summary>Reads the config and tokenizer now, then loads the weights on the engine thread (<see cref="IsReady"/> turns true).</summary>
    public static GenerationEngine Start(EngineOptions options, ILoggerFactory loggerFactory, IAdapterBinder? adapters = null) =>
        new(options, loggerFactory, adapters);

    private GenerationEngine(EngineOptions options, ILoggerFactory loggerFactory, IAdapterBinder? adapters)
    {
        _options = options;
        _adapters = adapters;
        _logger = loggerFactory.CreateLogger<GenerationEngine>();
        bool demo = string.IsNullOrWhiteSpace(options.ModelPath);
        _modelDirectory = demo ? DemoModel.EnsureWritten() : Path.GetFullPath(options.ModelPath!);
        if (!Directory.Exists(_modelDirectory)) throw new DirectoryNotFoundException($"model directory '{_modelDirectory}' does not exist");
        Config = ModelConfig.Load(Path.Combine(_modelDirectory, "config.json"));
        Tokenizer = HfTokenizer.Load(_modelDirectory, GenerationConfigEos(_modelDirectory).Concat(Config.EosTokenIds).Distinct().ToList());
        ContextLength = options.MaxContext > 0 ? Math.Min(options.MaxContext, Config.MaxPositionEmbeddings) : Math.Min(Config.MaxPositionEmbeddings, 2048);
        string id = options.ServedModelName is { Length: > 0 } n ? n : demo ? "demo" : Path.GetFileName(_modelDirectory.TrimEnd(Path.DirectorySeparatorChar));
        Model = new ModelInfo(id, ContextLength, Config.VocabSize, DateTimeOffset.UtcNow.ToUnixTimeSeconds(), demo,
            demo ? "demo: a small random-weight Llama built from a fixed seed (not a trained model)" : $"{Config.Architecture} from {_modelDirectory}");
        if (demo) _logger.LogWarning("No --model given: serving the embedded {ModelId} model, a small Llama with RANDOM weights from a fixed seed (output is gibberish)", id);
        _thread = new Thread(Run) { IsBackground = true, Name = "adapterserve-engine" };
        _thread.Start();
    }

    private static IEnumerable<int> GenerationConfigEos(string dir)
    {
        string path = Path.Combine(dir, "generation_config.json");
        if (!File.Exists(path)) return [];
        var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))?["eos_token_id"];
        return node switch
        {
            System.Text.Json.Nodes.JsonArray a => a.Select(x => x!.GetValue<int>()).ToList(),
            System.Text.Json.Nodes.JsonValue v => [v.GetValue<int>()],
            _ => [],
        };
    }

    public ChannelReader<GenerationEvent> Submit(GenerationRequest request, CancellationToken cancellationToken)
    {
        if (_stopping) throw new ObjectDisposedException(nameof(GenerationEngine));
        if (request.PromptTokens.Count == 0) throw new ArgumentException("the prompt has no tokens");
        if (request.N < 1) throw new ArgumentOutOfRangeException(nameof(request), "n must be at least 1");
        foreach (int id in request.PromptTokens)
            if (id < 0 || id >= Config.VocabSize) throw new ArgumentOutOfRangeException(nameof(request), $"token id {id} is outside the vocabulary (0..{Config.VocabSize - 1})");
        if (request.PromptTokens.Count >= ContextLength)
            throw new ContextLengthExceededException($"The prompt has {request.PromptTokens.Count} tokens; this model's context length is {ContextLength}.");
        if ((long)request.PromptTokens.Count + request.Sampling.MaxTokens > ContextLength)     // long: max_tokens near int.MaxValue must not wrap
            throw new ContextLengthExceededException($"The prompt ({request.PromptTokens.Count} tokens) plus max_tokens ({request.Sampling.MaxTokens}) exceeds this model's context length of {ContextLength}.");
        if (request.N > _options.MaxBatch)
            throw new ArgumentOutOfRangeException(nameof(request), $"n ({request.N}) exceeds the batch size ({_options.MaxBatch})");
        if (Interlocked.Increment(ref _waitingRequests) > _options.MaxQueue)
        {
            Interlocked.Decrement(ref _waitingRequests);
            throw new QueueFullException($"The server is at capacity: {_options.MaxQueue} requests are already waiting. Retry later.");
        }
        RequestState state;
        try
        {
            string label = request.Adapters.Count == 0 ? Model.Id : string.Join("+", request.Adapters.Select(a => a.Name));
            state = new RequestState(request, label) { OpenChoices = request.N };
            if (request.Adapters.Count > 0)
                state.AdapterState = (_adapters ?? throw new AdapterNotFoundException(request.Adapters[0].Name)).Bind(request.Adapters);
        }
        catch
        {
            Interlocked.Decrement(ref _waitingRequests);
            throw;
        }
        EngineMetrics.RequestsWaiting.Set(WaitingRequests);
        state.Registration = cancellationToken.Register(() => { state.Cancelled = true; _wake.Release(); });
        _incoming.Enqueue(state);
        _wake.Release();
        return state.Output.Reader;
    }

    // ---------------------------------------------------------------- engine thread

    private void Run()
    {
        using var inference = inference_mode();
        try
        {
            var sw = Stopwatch.StartNew();
            var device = ParseDevice(_options.Device);
            var dtype = ParseDtype(_options.Dtype, device);
            _model = LlamaModel.Load(_modelDirectory, dtype, device, ContextLength);
            _cache = new KvCache(Config, _options.MaxBatch, ContextLength, dtype, device);
            _adapters?.ModelReady(new ModelBaseWeights(_model));
            _logger.LogInformation("Loaded {ModelId} ({Architecture}, {Layers} layers, hidden {Hidden}) as {Dtype} on {Device} in {LoadSeconds:F2}s: {WeightBytes} weight bytes, KV cache {KvBytes} bytes ({Slots} slots x {Context} positions)",
                Model.Id, Config.Architecture, Config.NumHiddenLayers, Config.HiddenSize, dtype, device, sw.Elapsed.TotalSeconds, _model.ParameterBytes, _cache.Bytes, _cache.Slots, ContextLength);
            _ready = true;
        }
        catch (Exception e)
        {
            _loadError = e;
            _logger.LogCritical(e, "Loading the model from {ModelDirectory} failed", _modelDirectory);
            _stopped.TrySetResult();
            return;
        }

        while (!_stopping)
        {
            try
            {
                long scheduling = Stopwatch.GetTimestamp();
                Admit();
                ReapCancelled();
                var step = Schedule();
                if (step.Count == 0)
                {
                    _wake.Wait(_waiting.Count > 0 ? 20 : 1000);
                    continue;
                }
                Execute(step, scheduling);
                RecordLiveTensors();
            }
            catch (Exception e)
            {
                // Outside a forward pass (scheduling, sampling, detokenizing): the state of the batch is unknown, so it all ends.
                FailAll(e);
            }
        }
        foreach (var s in _running.Concat(_waiting).ToList()) Finish(s, FinishReason.Cancelled);
        _cache?.Dispose();
        _model?.Dispose();
        _stopped.TrySetResult();
    }

    private void Admit()
    {
        while (_incoming.TryDequeue(out var state))
        {
            var r = state.Request;
            for (int i = 0; i < r.N; i++)
                _waiting.Add(new Sequence(state, i, new Sampler(r.Sampling, i), new OutputText(Tokenizer, r.PromptTokens, r.Sampling.StopStrings)));
        }
    }

    private void ReapCancelled()
    {
        foreach (var s in _running.Concat(_waiting).Where(s => s.Owner.Cancelled).ToList())
            Finish(s, FinishReason.Cancelled);
    }

    /// <summary>Every running sequence decodes one token; waiting ones are admitted (and prefilled in chunks) while slots and the token budget allow.</summary>
    private List<Sequence> Schedule()
    {
        var step = new List<Sequence>();
        int budget = _options.MaxTokensPerStep;
        foreach (var s in _running.Where(s => s.Status == SequenceStatus.Decoding)) { step.Add(s); budget--; }
        foreach (var s in _running.Where(s => s.Status == SequenceStatus.Prefilling))
        {
            if (budget <= 0) break;
            step.Add(s);
            budget -= Math.Min(budget, s.PromptLength - s.Computed);
        }
        for (int i = 0; i < _waiting.Count && budget > 0 && _cache!.FreeSlots > 0 && _running.Count < _options.MaxBatch; i++)
        {
            var s = _waiting[i];
            try
            {
                if (s.Owner.AdapterState is { } binding && !_adapters!.IsReady(binding)) continue;   // loading in the background
            }
            catch (Exception e)
            {
                Finish(s, FinishReason.Error, error: e.Message);
                i--;
                continue;
            }
            _cache.TryAllocate(out int slot);
            s.Slot = slot;
            s.Status = SequenceStatus.Prefilling;
            _waiting.RemoveAt(i--);
            if (!_waiting.Any(w => w.Owner == s.Owner)) Interlocked.Decrement(ref _waitingRequests);
            _running.Add(s);
            step.Add(s);
            budget -= Math.Min(budget, s.PromptLength);
        }
        UpdateGauges();
        return step;
    }

    /// <param name="scheduling">When this iteration of the loop began scheduling (a <see cref="Stopwatch"/> timestamp).</param>
    private void Execute(List<Sequence> step, long scheduling)
    {
        long started = Stopwatch.GetTimestamp(), releasing;
        if (_adapters is not null)   // sequences on the same adapters side by side: one contiguous segment per adapter
            step = [.. step.OrderBy(s => s.Owner.AdapterState?.GroupKey ?? "", StringComparer.Ordinal)];
        using (var scope = NewDisposeScope())
        {
            var plan = Plan(step);
            EngineStepPhases.Add(EngineStepPhases.Schedule, scheduling);
            RunContained(plan);
            EngineMetrics.StepSeconds.Observe(Stopwatch.GetElapsedTime(started).TotalSeconds);
            releasing = Stopwatch.GetTimestamp();
        }
        EngineStepPhases.Add(EngineStepPhases.Release, releasing);
    }

    /// <summary>The tokens each sequence feeds this step (a decode token or a prompt chunk), fixed once so that a retried or split step feeds the same.</summary>
    private List<PlannedStep> Plan(List<Sequence> step)
    {
        int budget = _options.MaxTokensPerStep;
        var plan = new List<PlannedStep>(step.Count);
        for (int i = 0; i < step.Count; i++)
        {
            var s = step[i];
            int count = s.Status == SequenceStatus.Decoding ? 1 : Math.Max(1, Math.Min(s.Tokens.Count - s.Computed, budget - (step.Count - i - 1)));
            budget -= count;
            bool allLogits = s.Status == SequenceStatus.Prefilling && s.Owner.Request.PromptLogprobs;
            plan.Add(new PlannedStep(s, new SequenceStep(s.Slot, s.Computed, s.Tokens.GetRange(s.Computed, count), allLogits)));
        }
        return plan;
    }

    /// <summary>
    /// The forward pass of <paramref name="part"/> and its logits on the CPU. Changes nothing of the sequences: its only
    /// lasting effect is the keys/values it writes at the positions it feeds, which a later attempt overwrites.
    /// </summary>
    private StepOutput Forward(IReadOnlyList<PlannedStep> part)
    {
        long t = Stopwatch.GetTimestamp();
        var batch = new ForwardBatch(part.Select(p => p.Step).ToList());
        var hook = BuildHook(part, batch);
        t = EngineStepPhases.Add(EngineStepPhases.Hook, t);
        Tensor logits;
        try { logits = _model!.Forward(batch, _cache!, hook); }                      // [rows, vocab]
        catch { hook?.Abandon(); throw; }
        t = EngineStepPhases.Add(EngineStepPhases.Forward, t);
        hook?.Complete();
        t = EngineStepPhases.Add(EngineStepPhases.AdaptersComplete, t);
        bool wantLogprobs = part.Any(p => p.Sequence.Owner.Request.Sampling.Logprobs is not null || p.Sequence.Owner.Request.PromptLogprobs);
        var logprobs = wantLogprobs ? logits.log_softmax(-1) : null;              // [rows, vocab]
        // Greedy rows need one id each, not their vocab-wide row on the host: argmax on the device, one small copy.
        var greedy = part.Any(p => p.Sequence.Sampler.IsGreedy) ? logits.argmax(-1).cpu().data<long>().ToArray() : null; // [rows]
        bool sampled = part.Any(p => !p.Sequence.Sampler.IsGreedy);
        var output = new StepOutput(batch, sampled ? logits.cpu().contiguous() : logits, logprobs?.cpu(), greedy);
        EngineStepPhases.Add(EngineStepPhases.Logits, t);
        return output;
    }

    /// <summary>Advances the sequences of <paramref name="part"/> by the output of its forward pass: prompt progress, sampling, events.</summary>
    private void Commit(IReadOnlyList<PlannedStep> part, StepOutput output)
    {
        long started = Stopwatch.GetTimestamp();
        try { CommitTokens(part, output); }
        finally { EngineStepPhases.Add(EngineStepPhases.Sample, started); }
    }

    private void CommitTokens(IReadOnlyList<PlannedStep> part, StepOutput output)
    {
        EngineMetrics.BatchSize.Observe(part.Count);
        EngineMetrics.StepTokens.Observe(output.Batch.TokenCount);
        int row = 0;
        foreach (var (s, st) in part)
        {
            if (st.AllLogits) RecordPromptLogprobs(s, st, output.Logprobs!, row);
            int lastRow = row + (st.AllLogits ? st.TokenCount : 1) - 1;
            row = lastRow + 1;
            s.Computed += st.TokenCount;
            if (s.Status == SequenceStatus.Prefilling)
            {
                EngineMetrics.PromptTokens.WithLabels(s.Owner.ModelLabel).Inc(st.TokenCount);
                if (s.Computed < s.PromptLength) continue;     // more prompt chunks to go
                s.Status = SequenceStatus.Decoding;
                if (s.PromptLogprobs is not null) s.Owner.Emit(new PromptLogprobsEvent(s.Index, s.PromptLogprobs));
            }
            int token = s.Sampler.IsGreedy ? (int)output.Greedy![lastRow] : s.Sampler.Sample(RowSpan(output.Logits, lastRow));
            var lp = s.Owner.Request.Sampling.Logprobs is int k ? TokenLogprobOf(output.Logprobs!, lastRow, token, k) : null;
            AcceptToken(s, token, lp);
        }
    }

    private void RecordLiveTensors()
    {
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Interlocked.Exchange(ref _liveTensors, live);
        EngineMetrics.LiveTensors.Set(live);
    }

    private IAdapterStepHook? BuildHook(IReadOnlyList<PlannedStep> part, ForwardBatch batch)
    {
        if (_adapters is null || part.All(p => p.Sequence.Owner.AdapterState is null)) return null;
        var segments = new List<StepSegment>(part.Count);
        for (int i = 0; i < part.Count; i++)
            segments.Add(new StepSegment(batch.TokenStarts[i], batch.Sequences[i].TokenCount, part[i].Sequence.Owner.AdapterState));
        return _adapters.BuildHook(segments);
    }

    /// <summary>Row <paramref name="row"/> of the host logits <c>[rows, vocab]</c> (float32, contiguous), read in place: no copy of the vocabulary-wide row.</summary>
    private static ReadOnlySpan<float> RowSpan(Tensor rows, int row) => MemoryMarshal.Cast<byte, float>(rows[row].bytes);

    private void RecordPromptLogprobs(Sequence s, SequenceStep st, Tensor logprobs, int firstRow)
    {
        s.PromptLogprobs ??= [null];
        int k = s.Owner.Request.Sampling.Logprobs ?? 0;
        for (int j = 0; j < st.TokenCount; j++)
        {
            int position = st.PastLength + j;
            if (position + 1 >= s.PromptLength) break;    // the last prompt row predicts the first generated token
            s.PromptLogprobs.Add(TokenLogprobOf(logprobs, firstRow + j, s.Tokens[position + 1], k));
        }
    }

    private TokenLogprob TokenLogprobOf(Tensor logprobs, int row, int token, int topK)
    {
        var r = logprobs[row];
        var top = new List<TopLogprob>();
        if (topK > 0)
        {
            var (values, indices) = r.topk(topK);
            var v = values.data<float>().ToArray();
            var ix = indices.data<long>().ToArray();
            for (int i = 0; i < v.Length; i++) top.Add(new TopLogprob((int)ix[i], Tokenizer.TokenText((int)ix[i]), v[i]));
        }
        return new TokenLogprob(token, Tokenizer.TokenText(token), r[token].item<float>(), top);
    }

    private void AcceptToken(Sequence s, int token, TokenLogprob? logprob)
    {
        var owner = s.Owner;
        var p = owner.Request.Sampling;
        long now = Stopwatch.GetTimestamp();
        if (s.Generated == 0) EngineMetrics.TimeToFirstToken.WithLabels(owner.ModelLabel).Observe(Stopwatch.GetElapsedTime(owner.ArrivalTimestamp, now).TotalSeconds);
        else EngineMetrics.TimePerOutputToken.WithLabels(owner.ModelLabel).Observe(Stopwatch.GetElapsedTime(s.LastTokenTimestamp, now).TotalSeconds);
        s.LastTokenTimestamp = now;
        s.Tokens.Add(token);
        EngineMetrics.GenerationTokens.WithLabels(owner.ModelLabel).Inc();

        bool eos = !p.IgnoreEos && Tokenizer.EosTokenIds.Contains(token);
        if (eos || p.StopTokenIds.Contains(token)) { Finish(s, FinishReason.Stop); return; }
        string text = s.Text.Push(token);
        owner.Emit(new TokenEvent(s.Index, token, text, logprob));
        if (s.Text.Stopped) Finish(s, FinishReason.Stop);
        else if (s.Generated >= p.MaxTokens || s.Tokens.Count >= ContextLength) Finish(s, FinishReason.Length);
    }

    private void Finish(Sequence s, FinishReason reason, string? error = null, string? errorCode = null)
    {
        if (s.Status == SequenceStatus.Finished) return;
        var owner = s.Owner;
        if (s.Status == SequenceStatus.Waiting)
        {
            _waiting.Remove(s);
            if (!_waiting.Any(w => w.Owner == owner)) Interlocked.Decrement(ref _waitingRequests);
        }
        else
        {
            _running.Remove(s);
            _cache!.Release(s.Slot);
            s.Slot = -1;
        }
        s.Status = SequenceStatus.Finished;
        string tail = reason is FinishReason.Stop or FinishReason.Length ? s.Text.Flush() : "";
        owner.Emit(new FinishEvent(s.Index, reason, tail, s.PromptLength, s.Generated, error, errorCode));
        EngineMetrics.RequestsFinished.WithLabels(owner.ModelLabel, reason.ToString().ToLowerInvariant()).Inc();
        EngineMetrics.E2eLatency.WithLabels(owner.ModelLabel).Observe(Stopwatch.GetElapsedTime(owner.ArrivalTimestamp).TotalSeconds);
        if (--owner.OpenChoices == 0)
        {
            owner.Output.Writer.TryComplete();
            owner.Registration.Dispose();
            if (owner.AdapterState is { } binding) _adapters!.Release(binding);
        }
        UpdateGauges();
    }

    private void UpdateGauges()
    {
        Volatile.Write(ref _runningSequences, _running.Count);
        EngineMetrics.RequestsRunning.Set(_running.Count);
        EngineMetrics.RequestsWaiting.Set(WaitingRequests);
        double kvUsage = _cache is null ? 0 : 1.0 - (double)_cache.FreeSlots / _cache.Slots;
        EngineMetrics.KvCacheUsage.Set(kvUsage);
        Volatile.Write(ref _load, new EngineLoad(_running.Count, WaitingRequests, kvUsage, AdapterNames(_running), AdapterNames(_waiting)));
    }

    private static IReadOnlyList<string> AdapterNames(List<Sequence> sequences)
    {
        if (sequences.All(s => s.Owner.Request.Adapters.Count == 0)) return [];
        return sequences.SelectMany(s => s.Owner.Request.Adapters.Select(a => a.Name)).Distinct().Order(StringComparer.Ordinal).ToList();
    }

    /// <summary>See <see cref="ComputeTarget.ParseDevice"/> (the one parser of <c>--device</c>).</summary>
    public static Device ParseDevice(string device) => ComputeTarget.ParseDevice(device);

    /// <summary>See <see cref="ComputeTarget.ParseDtype"/> (the one parser of <c>--dtype</c>).</summary>
    public static ScalarType ParseDtype(string dtype, Device device) => ComputeTarget.ParseDtype(dtype, device);

    public async ValueTask DisposeAsync()
    {
        _stopping = true;
        _wake.Release();
        await _stopped.Task.ConfigureAwait(false);
        _wake.Dispose();
    }
}
