namespace AdapterServe.Adapters;

/// <summary>
/// One file of an adapter directory, as a path relative to it with '/' separators. A <c>*</c> segment stands for any
/// one folder name (a LoRA-Mixer's <c>experts/*/adapter_model.safetensors</c>).
/// </summary>
public sealed record AdapterFilePattern(string Pattern, bool Required = true);

/// <summary>The files a kind's adapter directory holds; nothing else is accepted, stored or archived.</summary>
public sealed record AdapterFiles(IReadOnlyList<AdapterFilePattern> Patterns)
{
    public const string ConfigFileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";

    /// <summary>The PEFT layout: <c>adapter_config.json</c> and <c>adapter_model.safetensors</c>.</summary>
    public static AdapterFiles Peft { get; } = new([new(ConfigFileName), new(WeightsFileName)]);
}
