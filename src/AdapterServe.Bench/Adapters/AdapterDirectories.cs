using System.Text.Json.Nodes;
using AdapterServe.Modeling;

namespace AdapterServe.Bench.Adapters;

/// <summary>Adapter directories written once under <c>&lt;cache&gt;/&lt;model&gt;-adapters/</c> and reused by later runs.</summary>
public sealed class AdapterDirectories(string cacheRoot, string modelName, ModelConfig model, int seed, Action<string>? log = null)
{
    private const string StampFile = "bench-adapter.json";
    public string Root { get; } = Path.GetFullPath(Path.Combine(cacheRoot, modelName + "-adapters"));

    /// <summary>The directory of the <paramref name="index"/>-th distinct adapter of <paramref name="adapterCase"/>, written if missing.</summary>
    public string Ensure(AdapterCase adapterCase, int index)
    {
        string name = adapterCase.AdapterName(index);
        string dir = Path.Combine(Root, name);
        string stamp = new JsonObject { ["name"] = name, ["seed"] = seed, ["model"] = modelName }.ToJsonString();
        string stampPath = Path.Combine(dir, StampFile);
        if (File.Exists(stampPath) && File.ReadAllText(stampPath) == stamp) return dir;
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);

        log?.Invoke($"writing adapter {name} to {dir}");
        string staging = dir + ".tmp-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            adapterCase.Write(staging, model, adapterCase, StableSeed(seed, name));
            File.WriteAllText(Path.Combine(staging, StampFile), stamp);
            Directory.CreateDirectory(Root);
            Directory.Move(staging, dir);
        }
        catch
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
            throw;
        }
        return dir;
    }

    /// <summary>A seed that depends only on the run seed and the adapter name (string hashes are randomised per process).</summary>
    private static int StableSeed(int seed, string name)
    {
        unchecked
        {
            int h = seed;
            foreach (char c in name) h = h * 31 + c;
            return h & int.MaxValue;
        }
    }
}
