using System.Threading.Channels;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Tokenization;

namespace AdapterServe.Engine;

/// <summary>How to pick each next token. Plain data: the server fills it from the request, the engine thread reads it.</summary>
public sealed record SamplingParams
{
    /// <summary>0 = greedy.</summary>
    public float Temperature { get; init; } = 1f;
    public float TopP { get; init; } = 1f;
    /// <summary>0 or less = off.</summary>
    public int TopK { get; init; }
    /// <summary>Same seed, same prompt, same parameters → same tokens.</summary>
    public long? Seed { get; init; }
    public int MaxTokens { get; init; } = 16;
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    public IReadOnlyList<int> StopTokenIds { get; init; } = [];
    public bool IgnoreEos { get; init; }
    /// <summary>null: no logprobs; 0: the chosen token's logprob only; k (≤ 20): plus the top k alternatives.</summary>
    public int? Logprobs { get; init; }
}

/// <summary>One adapter applied to a request, with its scale (1 = as trained).</summary>
public sealed record AdapterRef(string Name, float Scale = 1f);

public sealed record GenerationRequest
{
    public required string RequestId { get; init; }
    public required IReadOnlyList<int> PromptTokens { get; init; }
    public required SamplingParams Sampling { get; init; }
    /// <summary>Empty = the base model alone.</summary>
    public IReadOnlyList<AdapterRef> Adapters { get; init; } = [];
    /// <summary>Independent completions of the same prompt, run as n sequences in the batch.</summary>
    public int N { get; init; } = 1;
    /// <summary>Also report the logprob of every prompt token (OpenAI <c>echo</c> with <c>logprobs</c>).</summary>
    public bool PromptLogprobs { get; init; }
}

public sealed record TopLogprob(int TokenId, string Token, float Logprob);

public sealed record TokenLogprob(int TokenId, string Token, float Logprob, IReadOnlyList<TopLogprob> Top);

public enum FinishReason { Stop, Length, Cancelled, Error }

/// <summary>What the engine streams back for a request; <c>Index</c> is the choice (0..n-1).</summary>
public abstract record GenerationEvent(int Index);

/// <summary>Logprobs of the prompt tokens (first is null: nothing predicts it). Sent once, before any token, when asked for.</summary>
public sealed record PromptLogprobsEvent(int Index, IReadOnlyList<TokenLogprob?> Tokens) : GenerationEvent(Index);

/// <summary>
/// One generated token. <c>Text</c> is the newly printable text (may be empty while a multi-byte character
/// or a possible stop string is held back). The stop string itself is never emitted.
/// </summary>
public sealed record TokenEvent(int Index, int TokenId, string Text, TokenLogprob? Logprob) : GenerationEvent(Index);

/// <summary>
/// A choice has finished. <c>Text</c> is any held-back text released at the end. With <see cref="FinishReason.Error"/>,
/// <c>Error</c> says what failed and <c>ErrorCode</c>, when set, is one of <see cref="EngineErrorCodes"/>.
/// </summary>
public sealed record FinishEvent(int Index, FinishReason Reason, string Text, int PromptTokens, int CompletionTokens, string? Error = null, string? ErrorCode = null) : GenerationEvent(Index);

/// <summary>Machine-readable causes of a <see cref="FinishReason.Error"/>, passed on to clients as the OpenAI error <c>code</c>.</summary>
public static class EngineErrorCodes
{
    /// <summary>A forward step failed for this sequence, alone or in every batch that held it; the message carries the error id of the server log line.</summary>
    public const string StepFailed = "engine_step_failed";
}

/// <summary>What the engine is doing, as of its last scheduling decision. Plain data, for gauges and gateways.</summary>
/// <param name="KvCacheUsage">Share of KV-cache slots in use, 0..1.</param>
/// <param name="RunningAdapters">Names of the adapters the running sequences use (distinct, ordinal order).</param>
/// <param name="WaitingAdapters">Names of the adapters waiting sequences ask for.</param>
public sealed record EngineLoad(int Running, int Waiting, double KvCacheUsage, IReadOnlyList<string> RunningAdapters, IReadOnlyList<string> WaitingAdapters)
{
    public static readonly EngineLoad Idle = new(0, 0, 0, [], []);
}

public sealed record ModelInfo(string Id, int ContextLength, int VocabSize, long CreatedUnixSeconds, bool IsDemo, string Description);

/// <summary>The request could not be admitted because the waiting queue is full (HTTP 429).</summary>
public sealed class QueueFullException(string message) : Exception(message);

/// <summary>The prompt plus max tokens does not fit the context (HTTP 413 / 400).</summary>
public sealed class ContextLengthExceededException(string message) : Exception(message);

/// <summary>A named adapter is not registered (HTTP 404 model_not_found).</summary>
public sealed class AdapterNotFoundException(string name) : Exception($"The model '{name}' does not exist.")
{
    public string AdapterName { get; } = name;
}

/// <summary>
/// The engine as the server sees it: plain .NET data in, a stream of events out. The engine thread owns every
/// tensor; <see cref="Submit"/> only enqueues. Cancelling <paramref name="cancellationToken"/> (a client that
/// went away) stops the request's sequences at the next step and frees their KV cache.
/// </summary>
public interface IGenerationEngine
{
    ModelInfo Model { get; }
    /// <summary>The base model's config.json (plain data; adapters are validated against its shapes).</summary>
    ModelConfig Config { get; }
    ITextTokenizer Tokenizer { get; }
    bool IsReady { get; }
    int RunningSequences { get; }
    int WaitingRequests { get; }
    /// <summary>The engine's load as of its last scheduling decision.</summary>
    EngineLoad Load { get; }

    /// <exception cref="QueueFullException"/>
    /// <exception cref="ContextLengthExceededException"/>
    /// <exception cref="AdapterNotFoundException"/>
    ChannelReader<GenerationEvent> Submit(GenerationRequest request, CancellationToken cancellationToken);
}

/// <summary>Engine settings, bound by the server from configuration and validated at start.</summary>
public sealed class EngineOptions
{
    /// <summary>A Hugging Face model directory; null or empty = the embedded <c>demo</c> model (random weights, fixed seed).</summary>
    public string? ModelPath { get; set; }
    /// <summary>Name the model is served under; default: the directory name, or "demo".</summary>
    public string? ServedModelName { get; set; }
    /// <summary>cpu or cuda (cuda:N).</summary>
    public string Device { get; set; } = "cpu";
    /// <summary>Compute dtype: float32 or bfloat16 (float16 only on cuda).</summary>
    public string Dtype { get; set; } = "float32";
    /// <summary>Most sequences decoding at once.</summary>
    public int MaxBatch { get; set; } = 32;
    /// <summary>Most requests waiting for a place in the batch; beyond it Submit throws QueueFullException.</summary>
    public int MaxQueue { get; set; } = 256;
    /// <summary>Most tokens (prefill + decode) in one forward step.</summary>
    public int MaxTokensPerStep { get; set; } = 2048;
    /// <summary>Longest sequence (prompt + completion); 0 = the model's max_position_embeddings, capped at 2048.</summary>
    public int MaxContext { get; set; }
}
