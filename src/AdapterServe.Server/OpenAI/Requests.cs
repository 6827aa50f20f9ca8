using System.Text.Json;
using System.Text.Json.Serialization;

namespace AdapterServe.Server.OpenAI;

/// <summary>Fields shared by <c>/v1/completions</c> and <c>/v1/chat/completions</c>.</summary>
public abstract class GenerationRequestBase
{
    /// <summary>The base model id, an adapter name, or <c>&lt;base&gt;:&lt;adapter&gt;</c>.</summary>
    /// <example>demo</example>
    [JsonPropertyName("model")] public string? Model { get; set; }

    /// <summary>Sampling temperature, 0–2; 0 is greedy. Default 1.</summary>
    /// <example>0</example>
    [JsonPropertyName("temperature")] public double? Temperature { get; set; }

    /// <summary>Nucleus sampling mass, (0, 1]. Default 1.</summary>
    /// <example>1</example>
    [JsonPropertyName("top_p")] public double? TopP { get; set; }

    /// <summary>Completions per prompt, 1–128. Default 1.</summary>
    /// <example>1</example>
    [JsonPropertyName("n")] public int? N { get; set; }

    /// <summary>Up to 4 strings that end a completion; the stop string itself is not returned.</summary>
    /// <example>["\n\n"]</example>
    [JsonPropertyName("stop")] public StopInput? Stop { get; set; }

    /// <summary>Same seed, same request → same output.</summary>
    /// <example>42</example>
    [JsonPropertyName("seed")] public long? Seed { get; set; }

    /// <summary>Stream the answer as Server-Sent Events, one chunk per token.</summary>
    /// <example>false</example>
    [JsonPropertyName("stream")] public bool? Stream { get; set; }

    /// <summary>Only with <c>stream: true</c>.</summary>
    [JsonPropertyName("stream_options")] public StreamOptions? StreamOptions { get; set; }

    /// <summary>End-user id; accepted and ignored.</summary>
    [JsonPropertyName("user")] public string? User { get; set; }

    /// <summary>Extension: sample from the k most likely tokens only; 0 or -1 = off.</summary>
    /// <example>0</example>
    [JsonPropertyName("top_k")] public int? TopK { get; set; }

    /// <summary>Extension: keep generating past end-of-sequence tokens until max tokens.</summary>
    /// <example>false</example>
    [JsonPropertyName("ignore_eos")] public bool? IgnoreEos { get; set; }

    /// <summary>Accepted when 0 (or absent); other values are not supported by this server.</summary>
    [JsonPropertyName("presence_penalty")] public double? PresencePenalty { get; set; }

    /// <summary>Accepted when 0 (or absent); other values are not supported by this server.</summary>
    [JsonPropertyName("frequency_penalty")] public double? FrequencyPenalty { get; set; }

    /// <summary>Accepted when empty (or absent); biases are not supported by this server.</summary>
    [JsonPropertyName("logit_bias")] public Dictionary<string, double>? LogitBias { get; set; }

    /// <summary>Extension: adapters applied to this request (after the one <c>model</c> names, if any), each with a scale.</summary>
    [JsonPropertyName("adapters")] public List<AdapterSelection>? Adapters { get; set; }

    /// <summary>Fields this server does not know; ignored (logged at Debug).</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? UnknownFields { get; set; }

    /// <summary>Paths of every ignored field of the request (for the Debug log).</summary>
    internal virtual IEnumerable<string> UnknownFieldPaths() =>
        Names("", UnknownFields).Concat(Names("stream_options.", StreamOptions?.UnknownFields));

    internal static IEnumerable<string> Names(string prefix, Dictionary<string, JsonElement>? fields) =>
        fields is null ? [] : fields.Keys.Select(k => prefix + k);
}

/// <summary>Body of <c>POST /v1/completions</c>.</summary>
public sealed class CompletionRequest : GenerationRequestBase
{
    /// <summary>A string, an array of strings, an array of token ids, or an array of token-id arrays.</summary>
    /// <example>Once upon a time</example>
    [JsonPropertyName("prompt")] public PromptInput? Prompt { get; set; }

    /// <summary>Most tokens to generate per choice. Default 16.</summary>
    /// <example>32</example>
    [JsonPropertyName("max_tokens")] public int? MaxTokens { get; set; }

    /// <summary>Return the prompt in front of the completion (and its logprobs, with <c>logprobs</c>).</summary>
    /// <example>false</example>
    [JsonPropertyName("echo")] public bool? Echo { get; set; }

    /// <summary>0–5: return the chosen token's logprob and this many alternatives per position.</summary>
    /// <example>2</example>
    [JsonPropertyName("logprobs")] public int? Logprobs { get; set; }

    /// <summary>Accepted when absent or equal to <c>n</c>.</summary>
    [JsonPropertyName("best_of")] public int? BestOf { get; set; }

    /// <summary>Accepted when absent or empty; suffixes are not supported.</summary>
    [JsonPropertyName("suffix")] public string? Suffix { get; set; }
}

/// <summary>Body of <c>POST /v1/chat/completions</c>.</summary>
public sealed class ChatCompletionRequest : GenerationRequestBase
{
    /// <summary>The conversation so far, oldest first.</summary>
    [JsonPropertyName("messages")] public List<ChatMessageInput>? Messages { get; set; }

    /// <summary>Most tokens to generate per choice. Default: what the context leaves after the prompt.</summary>
    /// <example>64</example>
    [JsonPropertyName("max_completion_tokens")] public int? MaxCompletionTokens { get; set; }

    /// <summary>Older name of <c>max_completion_tokens</c>; used when that one is absent.</summary>
    [JsonPropertyName("max_tokens")] public int? MaxTokens { get; set; }

    /// <summary>Return the logprob of each generated token.</summary>
    /// <example>false</example>
    [JsonPropertyName("logprobs")] public bool? Logprobs { get; set; }

    /// <summary>0–20 alternatives per position; needs <c>logprobs: true</c>.</summary>
    [JsonPropertyName("top_logprobs")] public int? TopLogprobs { get; set; }

    /// <summary>Accepted when absent or empty; tool calling is not supported.</summary>
    [JsonPropertyName("tools")] public List<JsonElement>? Tools { get; set; }

    /// <summary>Accepted when absent or "none".</summary>
    [JsonPropertyName("tool_choice")] public JsonElement? ToolChoice { get; set; }

    /// <summary>Accepted when absent or <c>{"type":"text"}</c>.</summary>
    [JsonPropertyName("response_format")] public ResponseFormat? ResponseFormat { get; set; }

    internal override IEnumerable<string> UnknownFieldPaths() =>
        base.UnknownFieldPaths()
            .Concat(Names("response_format.", ResponseFormat?.UnknownFields))
            .Concat((Messages ?? []).SelectMany((m, i) => m is null ? [] : Names($"messages[{i}].", m.UnknownFields)));
}

/// <summary>One chat message.</summary>
public sealed class ChatMessageInput
{
    /// <summary>system, developer, user or assistant.</summary>
    /// <example>user</example>
    [JsonPropertyName("role")] public string? Role { get; set; }

    /// <summary>A string, or an array of <c>{"type":"text","text":...}</c> parts.</summary>
    /// <example>Tell me a story.</example>
    [JsonPropertyName("content")] public ChatContent? Content { get; set; }

    /// <summary>Participant name; accepted and ignored.</summary>
    [JsonPropertyName("name")] public string? Name { get; set; }

    [JsonExtensionData] public Dictionary<string, JsonElement>? UnknownFields { get; set; }
}

public sealed class StreamOptions
{
    /// <summary>Send one more chunk before <c>[DONE]</c> with <c>choices: []</c> and the usage of the whole request.</summary>
    /// <example>true</example>
    [JsonPropertyName("include_usage")] public bool? IncludeUsage { get; set; }

    [JsonExtensionData] public Dictionary<string, JsonElement>? UnknownFields { get; set; }
}

public sealed class ResponseFormat
{
    /// <summary>Only "text" is supported.</summary>
    /// <example>text</example>
    [JsonPropertyName("type")] public string? Type { get; set; }

    [JsonExtensionData] public Dictionary<string, JsonElement>? UnknownFields { get; set; }
}

/// <summary>Extension: one adapter for this request.</summary>
public sealed class AdapterSelection
{
    /// <summary>A registered adapter name.</summary>
    /// <example>zara</example>
    [JsonPropertyName("name")] public string? Name { get; set; }

    /// <summary>Multiplier of the adapter's update; 1 = as trained. Default 1.</summary>
    /// <example>1</example>
    [JsonPropertyName("scale")] public double? Scale { get; set; }
}
