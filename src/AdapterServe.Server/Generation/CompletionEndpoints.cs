using System.Text;
using AdapterServe.Engine;
using AdapterServe.Modeling.Tokenization;
using AdapterServe.Server.Observability;
using AdapterServe.Server.Hosting;
using AdapterServe.Server.OpenAI;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Generation;

/// <summary><c>POST /v1/completions</c>.</summary>
internal static class CompletionEndpoints
{
    public static RouteGroupBuilder MapCompletions(this RouteGroupBuilder v1)
    {
        v1.MapGroup("/completions").WithTags("Completions").MapPost("", CreateAsync)
            .WithName("CreateCompletion")
            .WithSummary("Complete one or more prompts")
            .WithDescription("OpenAI legacy completions. With `stream: true` the answer is Server-Sent Events: one `data: <chunk>` per token, `data: [DONE]` at the end.")
            .WithMetadata(new GenerationDoc(typeof(CompletionRequest), typeof(CompletionResponse), typeof(CompletionResponse)))
            .ProducesOpenAIErrors(400, 401, 404, 413, 429, 500, 503);
        return v1;
    }

    internal static Task<Results<Ok<CompletionResponse>, ServerSentEventsResult<string>>> CreateAsync(
        HttpContext http, IGenerationEngine engine, IOptions<EngineOptions> engineOptions, IOptions<RequestLimits> limits, ILogger<CompletionRequest> logger) =>
        GenerationEndpoint.CreateAsync<CompletionRequest, CompletionResponse>(http, engine, limits.Value, logger,
            (request, record) => Plan(request, engine, engineOptions.Value, limits.Value, record),
            (plan, record) => new CompletionAnswer(plan, engine.Tokenizer, "cmpl-" + Guid.NewGuid().ToString("N"), GenerationEndpoint.UnixNow(), record));

    internal static GenerationPlan Plan(CompletionRequest r, IGenerationEngine engine, EngineOptions options, RequestLimits limits, GenerationRecord record)
    {
        string model = RequestValidation.RequireModel(r.Model);
        record.Model = model;
        record.ModelAccepted = model == engine.Model.Id;
        var (modelAdapter, adapters) = RequestValidation.Adapters(model, engine.Model.Id, r.Adapters);
        record.Adapters = adapters.Count == 0 ? null : string.Join(",", adapters.Select(a => a.Name));
        if (r.Prompt is null) throw ApiException.InvalidValue("prompt", "'prompt' is required.");
        RequestValidation.RejectUnsupported(r);
        if (r.Suffix is { Length: > 0 }) throw ApiException.Unsupported("suffix", "'suffix' is not supported by this server.");
        int n = RequestValidation.N(r.N, options, limits);
        if (r.BestOf is int bestOf && bestOf != n)
            throw ApiException.Unsupported("best_of", $"'best_of' must equal 'n' ({n}) on this server, got {bestOf}.");
        var logprobs = RequestValidation.Logprobs(r.Logprobs, limits);
        int maxTokens = RequestValidation.MaxTokens(r.MaxTokens, "max_tokens", 16);
        var (stream, includeUsage) = RequestValidation.Streaming(r);
        var sampling = RequestValidation.Sampling(r, maxTokens, logprobs, limits);
        RequestValidation.CheckPromptBytes(r.Prompt.Items.Sum(item => item.Text is null ? 0L : Encoding.UTF8.GetByteCount(item.Text)), limits,
            "prompt", r.Prompt.IsBatch ? "batch of prompts" : "prompt");

        var tokenizer = engine.Tokenizer;
        var prompts = new List<PromptPlan>(r.Prompt.Items.Count);
        for (int i = 0; i < r.Prompt.Items.Count; i++)
        {
            var item = r.Prompt.Items[i];
            string which = r.Prompt.IsBatch ? $"prompt {i}" : "the prompt";
            IReadOnlyList<int> ids = item.TokenIds ?? tokenizer.Encode(item.Text!, addSpecialTokens: true);
            if (ids.Count == 0) throw ApiException.InvalidValue("prompt", $"{Capitalized(which)} encodes to no tokens.");
            for (int j = 0; j < ids.Count; j++)
                if (ids[j] >= engine.Model.VocabSize)
                    throw ApiException.InvalidValue("prompt", $"Token id {ids[j]} (position {j} of {which}) is outside the vocabulary of {engine.Model.VocabSize} tokens.");
            RequestValidation.CheckFits(ids.Count, maxTokens, engine.Model.ContextLength, "prompt", "max_tokens", i);
            prompts.Add(new PromptPlan(ids, item.Text ?? tokenizer.Decode(ids)));
        }
        record.PromptTokens = prompts.Sum(p => p.TokenIds.Count);
        record.Stream = stream;
        return new GenerationPlan
        {
            Model = model, ModelAdapter = modelAdapter, Adapters = adapters, Prompts = prompts, Sampling = sampling,
            MaxTokensParam = "max_tokens", N = n, Stream = stream, IncludeUsage = includeUsage, Echo = r.Echo ?? false,
        };
    }

    private static string Capitalized(string s) => char.ToUpperInvariant(s[0]) + s[1..];
}

/// <summary>
/// The answer to one completion request, built event by event: the whole response, or (streaming) one chunk per
/// event. Choice index = prompt index × n + the engine's choice index.
/// </summary>
internal sealed class CompletionAnswer(GenerationPlan plan, ITextTokenizer tokenizer, string id, long created, GenerationRecord record)
    : IGenerationAnswer<CompletionResponse>
{
    private sealed class Choice
    {
        public readonly StringBuilder Text = new();
        public LegacyLogprobs? Logprobs;
        public bool Echoed;
        public string? FinishReason;
    }

    private readonly Choice[] _choices = Enumerable.Range(0, plan.ChoiceCount)
        .Select(_ => new Choice { Logprobs = plan.Sampling.Logprobs is null ? null : new LegacyLogprobs() }).ToArray();
    private readonly IReadOnlyList<TokenLogprob?>?[] _promptLogprobs = new IReadOnlyList<TokenLogprob?>?[plan.Prompts.Count];
    private int _completionTokens;

    public string Id => id;

    public IEnumerable<object> Head() => [];

    public IEnumerable<object> Apply(int prompt, GenerationEvent e, bool streaming)
    {
        int index = prompt * plan.N + e.Index;
        if ((uint)e.Index >= (uint)plan.N) throw new InvalidOperationException($"The engine sent an event for choice {e.Index} of a request with n = {plan.N}.");
        var c = _choices[index];
        var chunks = new List<object>(2);
        if (e is PromptLogprobsEvent pl) _promptLogprobs[prompt] ??= pl.Tokens;
        if (plan.Echo && !c.Echoed && (e is not PromptLogprobsEvent || plan.PromptLogprobs))
        {
            var p = plan.Prompts[prompt];
            c.Echoed = true;
            c.Text.Append(p.Text);
            var lp = c.Logprobs?.AddPrompt(p.TokenIds, _promptLogprobs[prompt], tokenizer.TokenText);
            if (streaming) chunks.Add(Chunk(index, p.Text, lp, null));
        }
        switch (e)
        {
            case TokenEvent t:
                record.TokenArrived();
                c.Text.Append(t.Text);
                var slice = c.Logprobs?.Add(t.Logprob?.Token ?? tokenizer.TokenText(t.TokenId), t.Logprob);
                if (streaming && (t.Text.Length > 0 || slice is not null)) chunks.Add(Chunk(index, t.Text, slice, null));
                break;
            case FinishEvent f:
                string reason = GenerationEndpoint.FinishReasonText(f);
                c.Text.Append(f.Text);
                c.FinishReason = reason;
                _completionTokens += f.CompletionTokens;
                record.Finished(reason, f.CompletionTokens);
                if (streaming) chunks.Add(Chunk(index, f.Text, null, reason));
                break;
        }
        return chunks;
    }

    private CompletionResponse Chunk(int index, string text, CompletionLogprobs? logprobs, string? finishReason) =>
        new(id, "text_completion", created, plan.Model, [new CompletionChoice(index, text, logprobs, finishReason)], null);

    private Usage Usage() => OpenAI.Usage.Of(plan.Prompts.Sum(p => p.TokenIds.Count), _completionTokens);

    /// <summary>After the last event of a stream: the usage chunk when <c>include_usage</c> asked for it.</summary>
    public IEnumerable<object> Tail() =>
        plan.IncludeUsage ? [new CompletionResponse(id, "text_completion", created, plan.Model, [], Usage())] : [];

    public CompletionResponse Final()
    {
        var choices = new List<CompletionChoice>(_choices.Length);
        for (int i = 0; i < _choices.Length; i++)
        {
            var c = _choices[i];
            if (c.FinishReason is null) throw ApiException.GenerationFailed($"The engine ended the request without finishing choice {i}.");
            choices.Add(new CompletionChoice(i, c.Text.ToString(), c.Logprobs?.Build(), c.FinishReason));
        }
        return new CompletionResponse(id, "text_completion", created, plan.Model, choices, Usage());
    }
}
