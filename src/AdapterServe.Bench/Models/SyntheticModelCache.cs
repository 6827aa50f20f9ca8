using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Modeling;

namespace AdapterServe.Bench.Models;

/// <summary>
/// Writes a random-weight model directory once per (configuration, seed) under the cache folder, so every later run
/// loads it through the real loader without rewriting. A stamp file records what the directory was built from.
/// </summary>
public static class SyntheticModelCache
{
    public const string StampFile = "bench-model.json";

    /// <returns>The model directory <c>&lt;cacheRoot&gt;/&lt;name&gt;</c>.</returns>
    public static string Ensure(string cacheRoot, string name, ModelConfig config, int seed, Action<string>? log = null)
    {
        string dir = Path.GetFullPath(Path.Combine(cacheRoot, name));
        string fingerprint = Fingerprint(config, seed);
        string stamp = Path.Combine(dir, StampFile);
        if (File.Exists(stamp))
        {
            if (ReadFingerprint(stamp) == fingerprint && File.Exists(Path.Combine(dir, "model.safetensors"))) return dir;
            log?.Invoke($"cache {dir} was built from another configuration or seed: rewriting it");
            Directory.Delete(dir, recursive: true);
        }
        else if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
            throw new BenchException($"cache folder {dir} exists but was not written by the benchmark (no {StampFile}); remove it or choose another --cache-dir");

        log?.Invoke($"writing the random-weight {name} model ({ModelSizes.ParameterCount(config) / 1e6:0.#}M parameters) to {dir} (once)");
        string staging = dir + ".tmp-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            SyntheticModel.Write(staging, config, seed);
            File.WriteAllText(Path.Combine(staging, StampFile), new JsonObject { ["fingerprint"] = fingerprint, ["seed"] = seed, ["name"] = name }.ToJsonString());
            Directory.CreateDirectory(Path.GetDirectoryName(dir)!);
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);   // an empty folder left behind
            Directory.Move(staging, dir);
        }
        catch
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
            throw;
        }
        return dir;
    }

    /// <summary>Hash of the configuration JSON and the seed: a changed size or seed gets a new model.</summary>
    public static string Fingerprint(ModelConfig config, int seed)
    {
        string text = config.ToJson().ToJsonString() + "|seed=" + seed;
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
    }

    private static string? ReadFingerprint(string stamp)
    {
        try { return JsonNode.Parse(File.ReadAllText(stamp))?["fingerprint"]?.GetValue<string>(); }
        catch (System.Text.Json.JsonException) { return null; }
    }
}
