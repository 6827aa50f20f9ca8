using System.Net;
using AdapterServe.Engine;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Hosting;

/// <summary>HTTP-side settings (configuration section <c>Server</c>).</summary>
public sealed class ServerOptions
{
    public const string Section = "Server";

    /// <summary>Address Kestrel listens on: an IP address or <c>localhost</c>.</summary>
    public string Host { get; set; } = "127.0.0.1";

    /// <summary>TCP port; 0 = any free port.</summary>
    public int Port { get; set; } = 8000;

    /// <summary>Bearer keys accepted on <c>/v1/*</c>; none = the API is open. Entries may hold several comma-separated keys.</summary>
    public List<string> ApiKeys { get; set; } = [];

    /// <summary><c>text</c> (human-readable console lines) or <c>json</c> (compact JSON, one event per line).</summary>
    public string LogFormat { get; set; } = "text";

    /// <summary>Key of the administrative endpoints (adapter registry).</summary>
    public string? AdminKey { get; set; }

    /// <summary>Folder for server state (adapter store).</summary>
    public string? DataDir { get; set; }

    /// <summary>
    /// Also write vLLM's <c>vllm:*</c> gauges on <c>/metrics</c>, for the Gateway API Inference Extension's endpoint picker
    /// (<c>--gateway-metrics</c>). Off by default: Prometheus's own lint (<c>promtool check metrics</c>) reserves ':' for recording rules.
    /// </summary>
    public bool GatewayMetrics { get; set; }

    /// <summary>On SIGTERM or Ctrl+C, how long running generations may go on before they end with an error (<c>--drain-timeout</c>).</summary>
    public int DrainTimeoutSeconds { get; set; } = 30;

    /// <summary>The configured keys, comma-separated entries split and trimmed.</summary>
    public IReadOnlyList<string> EffectiveApiKeys =>
        ApiKeys.SelectMany(k => k.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)).ToList();
}

internal sealed class ServerOptionsValidator : IValidateOptions<ServerOptions>
{
    public ValidateOptionsResult Validate(string? name, ServerOptions o)
    {
        var errors = new List<string>();
        if (string.IsNullOrWhiteSpace(o.Host) || (o.Host != "localhost" && !IPAddress.TryParse(o.Host, out _)))
            errors.Add($"Server:Host (--host) must be an IP address or 'localhost', got '{o.Host}'.");
        if (o.Port is < 0 or > 65535)
            errors.Add($"Server:Port (--port) must be between 0 and 65535, got {o.Port}.");
        if (o.LogFormat is not ("text" or "json"))
            errors.Add($"Server:LogFormat (--log-format) must be 'text' or 'json', got '{o.LogFormat}'.");
        for (int i = 0; i < o.ApiKeys.Count; i++)
            if (string.IsNullOrWhiteSpace(o.ApiKeys[i]) || o.ApiKeys[i].Split(',').Any(k => k.Trim().Length == 0))
                errors.Add($"Server:ApiKeys:{i} (--api-key) holds an empty key.");
        if (o.DrainTimeoutSeconds is < 0 or > ServerDrain.MaxTimeoutSeconds)
            errors.Add($"Server:DrainTimeoutSeconds (--drain-timeout) must be between 0 and {ServerDrain.MaxTimeoutSeconds} seconds, got {o.DrainTimeoutSeconds}.");
        if (o.AdminKey is { } admin && string.IsNullOrWhiteSpace(admin))
            errors.Add("Server:AdminKey (--admin-key) must not be blank.");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}

internal sealed class EngineOptionsValidator : IValidateOptions<EngineOptions>
{
    public ValidateOptionsResult Validate(string? name, EngineOptions o)
    {
        var errors = new List<string>();
        if (!string.IsNullOrWhiteSpace(o.ModelPath))
        {
            if (!Directory.Exists(o.ModelPath))
                errors.Add($"Engine:ModelPath (--model): the directory '{o.ModelPath}' does not exist.");
            else if (!File.Exists(Path.Combine(o.ModelPath, "config.json")))
                errors.Add($"Engine:ModelPath (--model): '{o.ModelPath}' has no config.json; point it at a Hugging Face model directory.");
        }
        if (o.ServedModelName is { } served && (served.Length == 0 || served.Contains(':') || served.Any(char.IsWhiteSpace)))
            errors.Add($"Engine:ServedModelName (--served-model-name) must be non-empty without ':' or spaces, got '{served}'.");
        if (ComputeTarget.DeviceProblem(o.Device) is { } device) errors.Add($"Engine:Device (--device) {device}.");
        if (ComputeTarget.DtypeProblem(o.Dtype, o.Device) is { } dtype) errors.Add($"Engine:Dtype (--dtype) {dtype}.");
        if (o.MaxBatch < 1) errors.Add($"Engine:MaxBatch (--max-batch) must be at least 1, got {o.MaxBatch}.");
        if (o.MaxQueue < 1) errors.Add($"Engine:MaxQueue (--max-queue) must be at least 1, got {o.MaxQueue}.");
        if (o.MaxTokensPerStep < 1) errors.Add($"Engine:MaxTokensPerStep (--max-tokens-per-step) must be at least 1, got {o.MaxTokensPerStep}.");
        if (o.MaxContext < 0) errors.Add($"Engine:MaxContext (--max-context) must be 0 (the model's own) or positive, got {o.MaxContext}.");
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
