using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Generation;

/// <summary>
/// Bounds on what one generation request may ask for (configuration section <c>Server:Limits</c>). The defaults are
/// OpenAI's published bounds (n ≤ 128, legacy logprobs ≤ 5, top_logprobs ≤ 20, stop ≤ 4); the byte bounds keep a
/// huge prompt from reaching the tokenizer. Each refusal is an OpenAI error naming the field.
/// </summary>
public sealed class RequestLimits
{
    public const string Section = "Server:Limits";

    /// <summary>Most choices per prompt (<c>n</c>); also never more than <c>--max-batch</c>.</summary>
    public int MaxN { get; set; } = 128;

    /// <summary>Most alternatives per token of the legacy completions' <c>logprobs</c>.</summary>
    public int MaxLogprobs { get; set; } = 5;

    /// <summary>Most alternatives per token of chat's <c>top_logprobs</c>.</summary>
    public int MaxTopLogprobs { get; set; } = 20;

    /// <summary>Most strings in <c>stop</c>.</summary>
    public int MaxStopStrings { get; set; } = 4;

    /// <summary>
    /// Most UTF-8 bytes of prompt text in one request (all prompts of a batch, or all message contents of a chat,
    /// together), checked before anything is tokenized; beyond it 413 <c>prompt_too_large</c> (<c>--max-prompt-bytes</c>).
    /// </summary>
    public int MaxPromptBytes { get; set; } = 1 << 20;

    /// <summary>Most bytes of a generation request's body (JSON); beyond it 413 <c>request_too_large</c> before it is parsed.</summary>
    public long MaxRequestBodyBytes { get; set; } = 8L << 20;
}

public static class RequestLimitsRegistration
{
    /// <summary><see cref="RequestLimits"/> bound from <c>Server:Limits</c> and validated at start.</summary>
    public static IServiceCollection AddRequestLimits(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddSingleton<IValidateOptions<RequestLimits>, RequestLimitsValidator>();
        services.AddOptions<RequestLimits>().Bind(configuration.GetSection(RequestLimits.Section)).ValidateOnStart();
        return services;
    }
}

internal sealed class RequestLimitsValidator : IValidateOptions<RequestLimits>
{
    public ValidateOptionsResult Validate(string? name, RequestLimits o)
    {
        var errors = new List<string>();
        if (o.MaxN < 1) errors.Add($"{RequestLimits.Section}:MaxN must be at least 1, got {o.MaxN}.");
        if (o.MaxLogprobs < 0) errors.Add($"{RequestLimits.Section}:MaxLogprobs must not be negative, got {o.MaxLogprobs}.");
        if (o.MaxTopLogprobs < 0) errors.Add($"{RequestLimits.Section}:MaxTopLogprobs must not be negative, got {o.MaxTopLogprobs}.");
        if (o.MaxStopStrings < 0) errors.Add($"{RequestLimits.Section}:MaxStopStrings must not be negative, got {o.MaxStopStrings}.");
        if (o.MaxPromptBytes < 1) errors.Add($"{RequestLimits.Section}:MaxPromptBytes (--max-prompt-bytes) must be at least 1, got {o.MaxPromptBytes}.");
        if (o.MaxRequestBodyBytes < 1) errors.Add($"{RequestLimits.Section}:MaxRequestBodyBytes must be at least 1, got {o.MaxRequestBodyBytes}.");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
