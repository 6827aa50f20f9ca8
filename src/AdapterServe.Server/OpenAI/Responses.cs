using System.Text.Json.Serialization;

namespace AdapterServe.Server.OpenAI;

public sealed record Usage(
    [property: JsonPropertyName("prompt_tokens")] int PromptTokens,
    [property: JsonPropertyName("completion_tokens")] int CompletionTokens,
    [property: JsonPropertyName("total_tokens")] int TotalTokens)
{
    public static Usage Of(int prompt, int completion) => new(prompt, completion, prompt + completion);
}

/// <summary>A <c>/v1/completions</c> answer, and (with <c>stream</c>) each of its chunks.</summary>
/// <param name="Id" example="cmpl-3f6c1a">Unique id of the answer (shared by all chunks of a stream).</param>
/// <param name="Object">Always <c>text_completion</c>.</param>
/// <param name="Created" example="1735689600">Unix seconds.</param>
/// <param name="Model" example="demo">The <c>model</c> of the request.</param>
/// <param name="Choices">One per prompt and <c>n</c>; a stream chunk holds one (none in the usage chunk).</param>
/// <param name="Usage">Token counts of the whole request (in a stream only in the <c>include_usage</c> chunk).</param>
public sealed record CompletionResponse(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("created")] long Created,
    [property: JsonPropertyName("model")] string Model,
    [property: JsonPropertyName("choices")] IReadOnlyList<CompletionChoice> Choices,
    [property: JsonPropertyName("usage"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] Usage? Usage);

/// <param name="Index">prompt_index × n + i.</param>
/// <param name="Text" example=" there was a little girl named Lily.">The completion (prefixed by the prompt with <c>echo</c>).</param>
/// <param name="Logprobs">Null unless the request asked for <c>logprobs</c>.</param>
/// <param name="FinishReason" example="length"><c>stop</c> (end of sequence or stop string) or <c>length</c> (max tokens); null in stream chunks before the last.</param>
public sealed record CompletionChoice(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("text")] string Text,
    [property: JsonPropertyName("logprobs")] CompletionLogprobs? Logprobs,
    [property: JsonPropertyName("finish_reason")] string? FinishReason);

/// <summary>The legacy completions logprobs: parallel lists, one entry per token (prompt tokens first with <c>echo</c>, the very first with null logprobs).</summary>
/// <param name="Tokens">Token strings.</param>
/// <param name="TokenLogprobs">Log-probability of each token (null for the first prompt token).</param>
/// <param name="TopLogprobs">Per position: the most likely tokens and the chosen one, token → logprob.</param>
/// <param name="TextOffset">Character offset of each token, the running sum of the lengths of the token strings before it.</param>
public sealed record CompletionLogprobs(
    [property: JsonPropertyName("tokens")] IReadOnlyList<string> Tokens,
    [property: JsonPropertyName("token_logprobs")] IReadOnlyList<float?> TokenLogprobs,
    [property: JsonPropertyName("top_logprobs")] IReadOnlyList<IReadOnlyDictionary<string, float>?> TopLogprobs,
    [property: JsonPropertyName("text_offset")] IReadOnlyList<int> TextOffset);

/// <summary>A <c>/v1/chat/completions</c> answer (<c>object: chat.completion</c>).</summary>
public sealed record ChatCompletionResponse(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("created")] long Created,
    [property: JsonPropertyName("model")] string Model,
    [property: JsonPropertyName("choices")] IReadOnlyList<ChatChoice> Choices,
    [property: JsonPropertyName("usage")] Usage Usage);

public sealed record ChatChoice(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("message")] ChatMessageOutput Message,
    [property: JsonPropertyName("logprobs")] ChatLogprobs? Logprobs,
    [property: JsonPropertyName("finish_reason")] string FinishReason);

/// <param name="Role" example="assistant">Always <c>assistant</c>.</param>
/// <param name="Content" example="Once upon a time, there was a girl named Lily.">The generated text.</param>
public sealed record ChatMessageOutput(
    [property: JsonPropertyName("role")] string Role,
    [property: JsonPropertyName("content")] string Content);

public sealed record ChatLogprobs([property: JsonPropertyName("content")] IReadOnlyList<ChatTokenLogprob> Content);

/// <param name="Token">The token's text.</param>
/// <param name="Logprob">Its log-probability.</param>
/// <param name="Bytes">UTF-8 bytes of <c>token</c>.</param>
/// <param name="TopLogprobs">The <c>top_logprobs</c> most likely tokens at this position.</param>
public sealed record ChatTokenLogprob(
    [property: JsonPropertyName("token")] string Token,
    [property: JsonPropertyName("logprob")] float Logprob,
    [property: JsonPropertyName("bytes")] IReadOnlyList<int> Bytes,
    [property: JsonPropertyName("top_logprobs")] IReadOnlyList<ChatTopLogprob> TopLogprobs);

public sealed record ChatTopLogprob(
    [property: JsonPropertyName("token")] string Token,
    [property: JsonPropertyName("logprob")] float Logprob,
    [property: JsonPropertyName("bytes")] IReadOnlyList<int> Bytes);

/// <summary>One streamed chunk of a chat completion (<c>object: chat.completion.chunk</c>).</summary>
public sealed record ChatCompletionChunk(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("created")] long Created,
    [property: JsonPropertyName("model")] string Model,
    [property: JsonPropertyName("choices")] IReadOnlyList<ChatChunkChoice> Choices,
    [property: JsonPropertyName("usage"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] Usage? Usage);

public sealed record ChatChunkChoice(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("delta")] ChatDelta Delta,
    [property: JsonPropertyName("logprobs")] ChatLogprobs? Logprobs,
    [property: JsonPropertyName("finish_reason")] string? FinishReason);

/// <summary>Role in a choice's first chunk, content after, empty in the last (which carries the finish reason).</summary>
public sealed record ChatDelta(
    [property: JsonPropertyName("role"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Role,
    [property: JsonPropertyName("content"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Content);

/// <summary>One entry of <c>GET /v1/models</c>.</summary>
/// <param name="Id" example="demo">Model id: the base model, or an adapter.</param>
/// <param name="Object">Always <c>model</c>.</param>
/// <param name="Created">Unix seconds.</param>
/// <param name="OwnedBy" example="adapterserve">Owner.</param>
/// <param name="Parent">The base model for an adapter; null for the base model.</param>
/// <param name="Root" example="demo">The base model id.</param>
/// <param name="MaxModelLen" example="512">Longest sequence (prompt + completion).</param>
public sealed record ModelCard(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("created")] long Created,
    [property: JsonPropertyName("owned_by")] string OwnedBy,
    [property: JsonPropertyName("parent")] string? Parent,
    [property: JsonPropertyName("root")] string Root,
    [property: JsonPropertyName("max_model_len"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int? MaxModelLen = null);

public sealed record ModelList(
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("data")] IReadOnlyList<ModelCard> Data);

/// <summary><c>GET /health</c> when the model is loaded.</summary>
public sealed record HealthStatus(
    [property: JsonPropertyName("status")] string Status,
    [property: JsonPropertyName("model")] string Model);
