using AdapterServe.Engine;
using AdapterServe.Server.OpenAI;

namespace AdapterServe.Server.Generation;

/// <summary>Checks of the fields shared by completions and chat; each failure is a 400 naming the field.</summary>
internal static class RequestValidation
{
    public static string RequireModel(string? model) =>
        string.IsNullOrWhiteSpace(model) ? throw ApiException.InvalidValue("model", "'model' is required: the base model id or an adapter name (GET /v1/models lists them).") : model;

    /// <summary>
    /// <c>model</c> = the base id → no adapter from it; <c>&lt;base&gt;:&lt;adapter&gt;</c> or any other name → that adapter
    /// (the engine answers unknown names with <see cref="AdapterNotFoundException"/>: never a silent fall-back to the base).
    /// The <c>adapters</c> extension follows.
    /// </summary>
    public static (string? ModelAdapter, IReadOnlyList<AdapterRef> Adapters) Adapters(string model, string baseId, List<AdapterSelection>? extra)
    {
        string? modelAdapter = model == baseId ? null
            : model.StartsWith(baseId + ":", StringComparison.Ordinal) ? model[(baseId.Length + 1)..]
            : model;
        if (modelAdapter is { Length: 0 }) throw ApiException.InvalidValue("model", $"'model' names no adapter after '{baseId}:'.");
        var adapters = new List<AdapterRef>();
        if (modelAdapter is not null) adapters.Add(new AdapterRef(modelAdapter));
        for (int i = 0; extra is not null && i < extra.Count; i++)
        {
            var a = extra[i] ?? throw ApiException.InvalidValue($"adapters[{i}]", $"'adapters[{i}]' must be an object with a 'name'.");
            if (string.IsNullOrWhiteSpace(a.Name))
                throw ApiException.InvalidValue($"adapters[{i}].name", $"'adapters[{i}].name' must be a non-empty adapter name.");
            // The engine applies scales as float: a double beyond float's range would become infinite there.
            if (a.Scale is double s && !float.IsFinite((float)s))
                throw ApiException.InvalidValue($"adapters[{i}].scale", $"'adapters[{i}].scale' must be a finite number between {-float.MaxValue:G3} and {float.MaxValue:G3}, got {s:G}.");
            if (adapters.Any(x => x.Name == a.Name))
                throw ApiException.InvalidValue($"adapters[{i}].name", $"The adapter '{a.Name}' is applied twice (by 'model' or an earlier 'adapters' entry).");
            adapters.Add(new AdapterRef(a.Name, (float)(a.Scale ?? 1.0)));
        }
        return (modelAdapter, adapters);
    }

    public static int N(int? n, EngineOptions engine, RequestLimits limits)
    {
        int value = n ?? 1;
        if (value < 1 || value > limits.MaxN) throw ApiException.InvalidValue("n", $"'n' must be between 1 and {limits.MaxN}, got {value}.");
        if (value > engine.MaxBatch)
            throw ApiException.InvalidValue("n", $"'n' ({value}) exceeds the server's batch size ({engine.MaxBatch}, --max-batch).");
        return value;
    }

    public static (bool Stream, bool IncludeUsage) Streaming(GenerationRequestBase r)
    {
        bool stream = r.Stream ?? false;
        if (r.StreamOptions is not null && !stream)
            throw ApiException.InvalidValue("stream_options", "'stream_options' is only allowed with 'stream': true.");
        return (stream, r.StreamOptions?.IncludeUsage ?? false);
    }

    /// <summary>Fields of the OpenAI schema this server cannot honour: accepted at their neutral value, refused otherwise.</summary>
    public static void RejectUnsupported(GenerationRequestBase r)
    {
        Penalty("presence_penalty", r.PresencePenalty);
        Penalty("frequency_penalty", r.FrequencyPenalty);
        if (r.LogitBias is { Count: > 0 })
            throw ApiException.Unsupported("logit_bias", "'logit_bias' is not supported by this server.");
    }

    private static void Penalty(string name, double? value)
    {
        if (value is not double v) return;
        if (!double.IsFinite(v) || v < -2 || v > 2) throw ApiException.InvalidValue(name, $"'{name}' must be between -2 and 2, got {v}.");
        if (v != 0) throw ApiException.Unsupported(name, $"'{name}' is not supported by this server (only 0).");
    }

    /// <summary>Temperature, top_p, top_k, seed, stop, ignore_eos; max tokens and logprobs come from the endpoint.</summary>
    public static SamplingParams Sampling(GenerationRequestBase r, int maxTokens, int? logprobs, RequestLimits limits)
    {
        double temperature = r.Temperature ?? 1.0;
        if (!double.IsFinite(temperature) || temperature < 0 || temperature > 2)
            throw ApiException.InvalidValue("temperature", $"'temperature' must be between 0 and 2, got {temperature}.");
        double topP = r.TopP ?? 1.0;
        if (!double.IsFinite(topP) || topP <= 0 || topP > 1)
            throw ApiException.InvalidValue("top_p", $"'top_p' must be greater than 0 and at most 1, got {topP}.");
        int topK = r.TopK ?? 0;
        if (topK < -1) throw ApiException.InvalidValue("top_k", $"'top_k' must be -1 or 0 (off) or a positive number of tokens, got {topK}.");
        return new SamplingParams
        {
            Temperature = (float)temperature,
            TopP = (float)topP,
            TopK = Math.Max(0, topK),
            Seed = r.Seed,
            MaxTokens = maxTokens,
            StopStrings = Stop(r.Stop, limits.MaxStopStrings),
            IgnoreEos = r.IgnoreEos ?? false,
            Logprobs = logprobs,
        };
    }

    private static IReadOnlyList<string> Stop(StopInput? stop, int maxStopStrings)
    {
        if (stop is null) return [];
        if (stop.Strings.Count > maxStopStrings)
            throw ApiException.InvalidValue("stop", $"'stop' holds at most {maxStopStrings} strings, got {stop.Strings.Count}.");
        for (int i = 0; i < stop.Strings.Count; i++)
            if (stop.Strings[i].Length == 0)
                throw ApiException.InvalidValue("stop", $"'stop' strings must not be empty (entry {i} is).");
        return stop.Strings;
    }

    /// <summary>Prompt longer than the context → 413; prompt + max tokens beyond it → 400 on the max-tokens field.</summary>
    public static void CheckFits(int promptTokens, int maxTokens, int contextLength, string promptParam, string maxTokensParam, int promptIndex = 0)
    {
        string what = promptParam == "messages" ? "conversation ('messages', rendered with the chat template)" : promptIndex > 0 ? $"prompt {promptIndex}" : "prompt";
        if (promptTokens >= contextLength)
            throw ApiException.PromptTooLong(promptParam,
                $"The {what} has {promptTokens} tokens; this model's context length is {contextLength} tokens, which leaves no room to generate.");
        if ((long)promptTokens + maxTokens > contextLength)     // long: a max_tokens near int.MaxValue must not wrap around
            throw ApiException.CompletionTooLong(maxTokensParam,
                $"This model's context length is {contextLength} tokens; the {what} has {promptTokens} tokens and '{maxTokensParam}' asks for {maxTokens} more. Lower '{maxTokensParam}' to at most {contextLength - promptTokens}.");
    }

    /// <summary>
    /// Prompt text beyond <see cref="RequestLimits.MaxPromptBytes"/> → 413, checked on the UTF-8 byte count before the
    /// tokenizer sees it (a 10 MB prompt would otherwise be tokenized in full, only to be refused on its token count).
    /// </summary>
    public static void CheckPromptBytes(long bytes, RequestLimits limits, string param, string what)
    {
        if (bytes > limits.MaxPromptBytes)
            throw ApiException.PromptTooLarge(param,
                $"The {what} has {bytes} bytes of text; this server accepts at most {limits.MaxPromptBytes} bytes per request ({RequestLimits.Section}:MaxPromptBytes, --max-prompt-bytes).");
    }

    /// <summary>Legacy completions' <c>logprobs</c>: 0 to <see cref="RequestLimits.MaxLogprobs"/> alternatives.</summary>
    public static int? Logprobs(int? logprobs, RequestLimits limits)
    {
        if (logprobs is int lp && (lp < 0 || lp > limits.MaxLogprobs))
            throw ApiException.InvalidValue("logprobs", $"'logprobs' must be between 0 and {limits.MaxLogprobs}, got {lp}.");
        return logprobs;
    }

    /// <summary>Chat's <c>logprobs</c>/<c>top_logprobs</c>: the alternatives per token, or null without logprobs.</summary>
    public static int? TopLogprobs(bool? logprobs, int? topLogprobs, RequestLimits limits)
    {
        if (topLogprobs is int top)
        {
            if (top < 0 || top > limits.MaxTopLogprobs)
                throw ApiException.InvalidValue("top_logprobs", $"'top_logprobs' must be between 0 and {limits.MaxTopLogprobs}, got {top}.");
            if (logprobs != true) throw ApiException.InvalidValue("top_logprobs", "'top_logprobs' needs 'logprobs': true.");
        }
        return logprobs == true ? topLogprobs ?? 0 : null;
    }

    public static int MaxTokens(int? value, string param, int fallback)
    {
        int v = value ?? fallback;
        if (v < 1) throw ApiException.InvalidValue(param, $"'{param}' must be at least 1, got {v}.");
        return v;
    }
}
