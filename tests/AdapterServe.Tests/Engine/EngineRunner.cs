using System.Text;
using AdapterServe.Engine;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace AdapterServe.Tests.Engine;

public sealed record Completion(string Text, List<int> Tokens, FinishReason Reason, List<TokenLogprob?> Logprobs, IReadOnlyList<TokenLogprob?>? PromptLogprobs, FinishEvent? Finish = null);

/// <summary>Starts a real engine on a model directory and collects completions.</summary>
public static class EngineRunner
{
    public static async Task<GenerationEngine> StartAsync(string modelDir, int maxBatch = 8, int maxQueue = 64, int maxTokensPerStep = 512, int maxContext = 0, IAdapterBinder? adapters = null, ILoggerFactory? loggerFactory = null)
    {
        var engine = GenerationEngine.Start(new EngineOptions { ModelPath = modelDir, MaxBatch = maxBatch, MaxQueue = maxQueue, MaxTokensPerStep = maxTokensPerStep, MaxContext = maxContext }, loggerFactory ?? NullLoggerFactory.Instance, adapters);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!engine.IsReady)
        {
            if (engine.LoadError is { } e) throw new InvalidOperationException("model load failed", e);
            if (DateTime.UtcNow > deadline) throw new TimeoutException("engine did not become ready");
            await Task.Delay(10);
        }
        return engine;
    }

    public static async Task<Completion[]> RunAsync(IGenerationEngine engine, GenerationRequest request, CancellationToken ct = default)
    {
        var text = Enumerable.Range(0, request.N).Select(_ => new StringBuilder()).ToArray();
        var tokens = Enumerable.Range(0, request.N).Select(_ => new List<int>()).ToArray();
        var logprobs = Enumerable.Range(0, request.N).Select(_ => new List<TokenLogprob?>()).ToArray();
        var prompt = new IReadOnlyList<TokenLogprob?>?[request.N];
        var finishes = new FinishEvent?[request.N];
        await foreach (var e in engine.Submit(request, ct).ReadAllAsync(CancellationToken.None))
        {
            switch (e)
            {
                case TokenEvent t: text[t.Index].Append(t.Text); tokens[t.Index].Add(t.TokenId); logprobs[t.Index].Add(t.Logprob); break;
                case PromptLogprobsEvent p: prompt[p.Index] = p.Tokens; break;
                case FinishEvent f: text[f.Index].Append(f.Text); finishes[f.Index] = f; break;
            }
        }
        return Enumerable.Range(0, request.N).Select(i => new Completion(text[i].ToString(), tokens[i], finishes[i]?.Reason ?? default, logprobs[i], prompt[i], finishes[i])).ToArray();
    }

    public static GenerationRequest Greedy(IReadOnlyList<int> prompt, int maxTokens, int? logprobs = null) => new()
    {
        RequestId = Guid.NewGuid().ToString("N"),
        PromptTokens = prompt,
        Sampling = new SamplingParams { Temperature = 0, MaxTokens = maxTokens, Logprobs = logprobs, IgnoreEos = true },
    };
}
