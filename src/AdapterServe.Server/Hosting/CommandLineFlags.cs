namespace AdapterServe.Server.Hosting;

/// <summary>A command line the server cannot understand; the message names the flag.</summary>
public sealed class CommandLineException(string message) : Exception(message);

/// <summary>
/// Turns the server's flags (<c>--model</c>, <c>--port</c>, <c>--api-key</c>, …) into configuration-path arguments
/// (<c>--Engine:ModelPath=…</c>) for the standard command-line configuration provider. <c>--api-key</c> may repeat and
/// hold comma-separated keys. Other arguments (<c>--Server:Port=1</c>, <c>--environment=…</c>) pass through unchanged.
/// </summary>
public static class CommandLineFlags
{
    /// <summary>Flag → configuration path.</summary>
    public static readonly IReadOnlyDictionary<string, string> Paths = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["--model"] = "Engine:ModelPath",
        ["--served-model-name"] = "Engine:ServedModelName",
        ["--device"] = "Engine:Device",
        ["--dtype"] = "Engine:Dtype",
        ["--max-batch"] = "Engine:MaxBatch",
        ["--max-queue"] = "Engine:MaxQueue",
        ["--max-tokens-per-step"] = "Engine:MaxTokensPerStep",
        ["--max-context"] = "Engine:MaxContext",
        ["--host"] = "Server:Host",
        ["--port"] = "Server:Port",
        ["--api-key"] = "Server:ApiKeys",
        ["--log-format"] = "Server:LogFormat",
        ["--admin-key"] = "Server:AdminKey",
        ["--data-dir"] = "Server:DataDir",
        ["--allowed-adapter-paths"] = "Server:AllowedAdapterPaths",
    };

    public static string[] Translate(IReadOnlyList<string> args)
    {
        var result = new List<string>();
        var apiKeys = new List<string>();
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            if (!arg.StartsWith("--", StringComparison.Ordinal))
            {
                result.Add(arg);
                continue;
            }
            int eq = arg.IndexOf('=');
            string flag = eq < 0 ? arg : arg[..eq];
            if (!Paths.TryGetValue(flag, out var path))
            {
                if (flag.Length > 2 && flag.IndexOf('-', 2) >= 0 && !flag.Contains(':'))
                    throw new CommandLineException($"Unknown flag '{flag}'. Known flags: {string.Join(", ", Paths.Keys)}.");
                result.Add(arg);
                continue;
            }
            string value;
            if (eq >= 0) value = arg[(eq + 1)..];
            else if (i + 1 < args.Count && !args[i + 1].StartsWith("--", StringComparison.Ordinal)) value = args[++i];
            else throw new CommandLineException($"The flag '{flag}' needs a value ({flag} <value> or {flag}=<value>).");

            if (flag == "--api-key")
            {
                var keys = value.Split(',', StringSplitOptions.TrimEntries);
                if (keys.Any(k => k.Length == 0)) throw new CommandLineException("--api-key holds an empty key.");
                apiKeys.AddRange(keys);
            }
            else
            {
                result.Add($"--{path}={value}");
                // The adapter store (Adapters room) reads its admin key from the top-level "admin-key": the same flag reaches it.
                // It reads Server:DataDir itself (the data root; each base model's store is a folder in it).
                if (flag == "--admin-key") result.Add($"--admin-key={value}");
            }
        }
        for (int k = 0; k < apiKeys.Count; k++) result.Add($"--Server:ApiKeys:{k}={apiKeys[k]}");
        return result.ToArray();
    }
}
