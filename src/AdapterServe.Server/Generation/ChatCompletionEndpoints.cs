using System.Text;
using System.Text.Json;
using AdapterServe.Engine;
using AdapterServe.Modeling.Tokenization;
using AdapterServe.Server.Observability;
using AdapterServe.Server.Hosting;
using AdapterServe.Server.OpenAI;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Generation;

/// <summary><c>POST /v1/chat/completions</c>.</summary>
internal static class ChatCompletionEndpoints
{
    private static readonly HashSet<string> Roles = ["system", "developer", "user", "assistant"];

    public static RouteGroupBuilder MapChatCompletions(this RouteGroupBuilder v1)
    {
        v1.MapGroup("/chat").WithTags("Chat").MapPost("/completions", CreateAsync)
            .WithName("CreateChatCompletion")
            .WithSummary("Answer a conversation")
            .WithDescription("The messages are rendered with the model's chat template. With `stream: true` the answer is Server-Sent Events of `chat.completion.chunk` objects: the role first, then content, then an empty delta with the finish reason; `data: [DONE]` at the end.")
            .WithMetadata(new GenerationDoc(typeof(ChatCompletionRequest), typeof(ChatCompletionResponse), typeof(ChatCompletionChunk)))
            .ProducesOpenAIErrors(400, 401, 404, 413, 429, 500, 503);
        return v1;
    }

    internal static Task<Results<Ok<ChatCompletionResponse>, ServerSentEventsResult<string>>> CreateAsync(
        HttpContext http, IGenerationEngine engine, IOptions<EngineOptions> engineOptions, IOptions<RequestLimits> limits, ILogger<ChatCompletionRequest> logger) =>
        GenerationEndpoint.CreateAsync<ChatCompletionRequest, ChatCompletionResponse>(http, engine, limits.Value, logger,
            (request, record) => Plan(request, engine, engineOptions.Value, limits.Value, record),
            (plan, record) => new ChatAnswer(plan, "chatcmpl-" + Guid.NewGuid().ToString("N"), GenerationEndpoint.UnixNow(), record));

    internal static GenerationPlan Plan(ChatCompletionRequest r, IGenerationEngine engine, EngineOptions options, RequestLimits limits, GenerationRecord record)
    {
        string model = RequestValidation.RequireModel(r.Model);
        record.Model = model;
        record.ModelAccepted = model == engine.Model.Id;
        var (modelAdapter, adapters) = RequestValidation.Adapters(model, engine.Model.Id, r.Adapters);
        record.Adapters = adapters.Count == 0 ? null : string.Join(",", adapters.Select(a => a.Name));
        var messages = Messages(r.Messages);
        RequestValidation.RejectUnsupported(r);
        RejectToolsAndFormats(r);
        int n = RequestValidation.N(r.N, options, limits);
        int? logprobs = RequestValidation.TopLogprobs(r.Logprobs, r.TopLogprobs, limits);
        var (stream, includeUsage) = RequestValidation.Streaming(r);
        RequestValidation.CheckPromptBytes(messages.Sum(m => (long)Encoding.UTF8.GetByteCount(m.Content)), limits, "messages", "conversation ('messages')");

        // A template the tokenizer cannot render throws ChatTemplateException: 400 on 'messages' (ApiErrors).
        string prompt = engine.Tokenizer.ApplyChatTemplate(messages, addGenerationPrompt: true);
        // The template writes any bos token itself (as Hugging Face's apply_chat_template does).
        var ids = engine.Tokenizer.Encode(prompt, addSpecialTokens: false);
        if (ids.Count == 0) throw ApiException.InvalidValue("messages", "The rendered conversation encodes to no tokens.");
        int context = engine.Model.ContextLength;
        string maxParam = r.MaxCompletionTokens is not null ? "max_completion_tokens" : "max_tokens";
        if (ids.Count >= context) RequestValidation.CheckFits(ids.Count, 1, context, "messages", maxParam);
        int maxTokens = RequestValidation.MaxTokens(r.MaxCompletionTokens ?? r.MaxTokens, maxParam, context - ids.Count);
        RequestValidation.CheckFits(ids.Count, maxTokens, context, "messages", maxParam);
        var sampling = RequestValidation.Sampling(r, maxTokens, logprobs, limits);

        record.PromptTokens = ids.Count;
        record.Stream = stream;
        return new GenerationPlan
        {
            Model = model, ModelAdapter = modelAdapter, Adapters = adapters, Prompts = [new PromptPlan(ids, prompt)], Sampling = sampling,
            MaxTokensParam = maxParam, N = n, Stream = stream, IncludeUsage = includeUsage,
        };
    }

    /// <summary>Roles system/developer/user/assistant (developer is rendered as system: chat templates know no developer role).</summary>
    private static List<ChatMessage> Messages(List<ChatMessageInput>? input)
    {
        if (input is null || input.Count == 0) throw ApiException.InvalidValue("messages", "'messages' must be a non-empty array of messages.");
        var messages = new List<ChatMessage>(input.Count);
        for (int i = 0; i < input.Count; i++)
        {
            var m = input[i] ?? throw ApiException.InvalidValue($"messages[{i}]", $"'messages[{i}]' must be an object with 'role' and 'content'.");
            if (m.Role is null) throw ApiException.InvalidValue($"messages[{i}].role", $"'messages[{i}].role' is required.");
            if (!Roles.Contains(m.Role))
                throw ApiException.InvalidValue($"messages[{i}].role", $"'messages[{i}].role' must be one of system, developer, user, assistant; got '{m.Role}'.");
            if (m.Content is null) throw ApiException.InvalidValue($"messages[{i}].content", $"'messages[{i}].content' is required.");
            messages.Add(new ChatMessage(m.Role == "developer" ? "system" : m.Role, m.Content.Text));
        }
        return messages;
    }

    private static void RejectToolsAndFormats(ChatCompletionRequest r)
    {
        if (r.Tools is { Count: > 0 }) throw ApiException.Unsupported("tools", "Tool calling ('tools') is not supported by this server.");
        if (r.ToolChoice is { } choice && choice.ValueKind != JsonValueKind.Null
            && !(choice.ValueKind == JsonValueKind.String && choice.GetString() == "none"))
            throw ApiException.Unsupported("tool_choice", "'tool_choice' may only be \"none\" on this server.");
        if (r.ResponseFormat is { Type: not (null or "text") } format)
            throw ApiException.Unsupported("response_format", $"'response_format' type '{format.Type}' is not supported by this server (only 'text').");
    }
}

/// <summary>The answer to one chat request, built event by event (whole response, or chunks when streaming).</summary>
internal sealed class ChatAnswer(GenerationPlan plan, string id, long created, GenerationRecord record) : IGenerationAnswer<ChatCompletionResponse>
{
    private sealed class Choice
    {
        public readonly StringBuilder Text = new();
        public List<ChatTokenLogprob>? Logprobs;
        public string? FinishReason;
    }

    private readonly Choice[] _choices = Enumerable.Range(0, plan.N)
        .Select(_ => new Choice { Logprobs = plan.Sampling.Logprobs is null ? null : [] }).ToArray();
    private int _completionTokens;

    public string Id => id;

    /// <summary>First chunk of every choice: the role.</summary>
    public IEnumerable<object> Head() =>
        Enumerable.Range(0, plan.N).Select(i => Chunk(new ChatChunkChoice(i, new ChatDelta("assistant", ""), null, null)));

    /// <summary>A chat request has one prompt: <paramref name="prompt"/> is always 0.</summary>
    public IEnumerable<object> Apply(int prompt, GenerationEvent e, bool streaming)
    {
        if ((uint)e.Index >= (uint)plan.N) throw new InvalidOperationException($"The engine sent an event for choice {e.Index} of a request with n = {plan.N}.");
        var c = _choices[e.Index];
        var chunks = new List<object>(2);
        switch (e)
        {
            case TokenEvent t:
                record.TokenArrived();
                c.Text.Append(t.Text);
                ChatLogprobs? lp = null;
                if (c.Logprobs is not null && t.Logprob is not null)
                {
                    var entry = ChatLogprobShapes.Of(t.Logprob);
                    c.Logprobs.Add(entry);
                    lp = new ChatLogprobs([entry]);
                }
                if (streaming && (t.Text.Length > 0 || lp is not null))
                    chunks.Add(Chunk(new ChatChunkChoice(e.Index, new ChatDelta(null, t.Text), lp, null)));
                break;
            case FinishEvent f:
                string reason = GenerationEndpoint.FinishReasonText(f);
                c.Text.Append(f.Text);
                c.FinishReason = reason;
                _completionTokens += f.CompletionTokens;
                record.Finished(reason, f.CompletionTokens);
                if (streaming)
                {
                    if (f.Text.Length > 0) chunks.Add(Chunk(new ChatChunkChoice(e.Index, new ChatDelta(null, f.Text), null, null)));
                    chunks.Add(Chunk(new ChatChunkChoice(e.Index, new ChatDelta(null, null), null, reason)));
                }
                break;
        }
        return chunks;
    }

    private ChatCompletionChunk Chunk(ChatChunkChoice choice) => new(id, "chat.completion.chunk", created, plan.Model, [choice], null);

    private Usage Usage() => OpenAI.Usage.Of(plan.Prompts[0].TokenIds.Count, _completionTokens);

    public IEnumerable<object> Tail() =>
        plan.IncludeUsage ? [new ChatCompletionChunk(id, "chat.completion.chunk", created, plan.Model, [], Usage())] : [];

    public ChatCompletionResponse Final()
    {
        var choices = new List<ChatChoice>(_choices.Length);
        for (int i = 0; i < _choices.Length; i++)
        {
            var c = _choices[i];
            if (c.FinishReason is null) throw ApiException.GenerationFailed($"The engine ended the request without finishing choice {i}.");
            choices.Add(new ChatChoice(i, new ChatMessageOutput("assistant", c.Text.ToString()),
                c.Logprobs is null ? null : new ChatLogprobs(c.Logprobs), c.FinishReason));
        }
        return new ChatCompletionResponse(id, "chat.completion", created, plan.Model, choices, Usage());
    }
}
