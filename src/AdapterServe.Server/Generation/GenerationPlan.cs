using AdapterServe.Engine;

namespace AdapterServe.Server.Generation;

/// <summary>One prompt of a request, as token ids for the engine and as text for <c>echo</c>.</summary>
internal sealed record PromptPlan(IReadOnlyList<int> TokenIds, string Text);

/// <summary>A validated request, ready for the engine: everything the endpoints need to submit it and shape the answer.</summary>
internal sealed record GenerationPlan
{
    /// <summary>The <c>model</c> string of the request, echoed in every response.</summary>
    public required string Model { get; init; }
    /// <summary>The adapter <c>model</c> names (null for the base model).</summary>
    public required string? ModelAdapter { get; init; }
    public required IReadOnlyList<AdapterRef> Adapters { get; init; }
    public required IReadOnlyList<PromptPlan> Prompts { get; init; }
    public required SamplingParams Sampling { get; init; }
    /// <summary>The request field that set <see cref="SamplingParams.MaxTokens"/> (for errors).</summary>
    public required string MaxTokensParam { get; init; }
    public required int N { get; init; }
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }
    public bool Echo { get; init; }

    public int ChoiceCount => Prompts.Count * N;
    public bool PromptLogprobs => Echo && Sampling.Logprobs is not null;
}
