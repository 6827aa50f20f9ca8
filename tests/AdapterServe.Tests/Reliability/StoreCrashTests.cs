using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterHttp;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Server;

namespace AdapterServe.Tests.Reliability;

/// <summary>
/// Issue 8 part 5: the built server, a REAL child process on the tiny model, is killed with SIGKILL while a replace by
/// upload, a new path registration and an unload are under way, each stopped at one point of the write by the test-only
/// hook (<see cref="StoreWritePause"/>). A second process on the same data folder must list and serve, for each name, the
/// previous version or a whole new one (never a part of one), and start with no staging leftovers.
/// </summary>
[Collection(StoreCrashCollection.Name)]
public sealed class StoreCrashTests : IDisposable
{
    private const string Admin = "sk-crash-admin";
    private readonly TempFolder _temp = new();
    public void Dispose() => _temp.Dispose();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static readonly TestAdapter Previous = TinyAdapters.Lora(seed: 801), Replacement = TinyAdapters.Lora(seed: 802),
        ByPath = TinyAdapters.Lora(seed: 803), Unloaded = TinyAdapters.Lora(seed: 804);

    /// <summary><c>sha256:</c> over the sha256sum lines of the two files, computed here from the adapter's bytes.</summary>
    private static string Hash(TestAdapter a)
    {
        string Sha(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));
        string lines = $"{Sha(a.ConfigBytes())}  adapter_config.json\n{Sha(a.SafetensorsBytes())}  adapter_model.safetensors\n";
        return "sha256:" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(lines)));
    }

    [Theory]
    [InlineData("receiving")]
    [InlineData("received")]
    [InlineData("validated")]
    [InlineData("manifest")]
    [InlineData("renamed")]
    [InlineData("withdrawn")]
    public async Task Kill_9_mid_write_then_restart_serves_the_previous_or_the_whole_new_version_never_a_part(string point)
    {
        string dataRoot = _temp.Sub("data");
        string folder = ByPath.WriteTo(_temp.Sub("by-path"));

        // The stored state before the crash, written by the store itself into the folder the server will use (the base
        // as the server reads it from its config.json).
        var baseModel = ModelConfig.Load(Path.Combine(TinyModel.Directory, "config.json"));
        var seeded = new global::AdapterServe.Adapters.Store.AdapterStore(new AdapterStoreOptions { DataRoot = dataRoot }, baseModel,
            new FakeResidency(), new AdapterRegistry(), baseModelId: TinyModel.Id);
        foreach (var (name, adapter) in new[] { ("swap", Previous), ("gone", Unloaded) })
        {
            using var staging = seeded.BeginStaging();
            adapter.WriteTo(staging.ReceivedDirectory);
            await seeded.CommitAsync(name, staging, replace: false, "seed", Ct);
        }

        await using (var doomed = await ChildServer.StartAsync(dataRoot, new() { [StoreWritePause.DelayVariable] = "600000", [StoreWritePause.PointsVariable] = point }))
        {
            // Every write that reaches the point stops there; one that does not pass it (a path registration receives
            // no upload chunks) completes, or waits for the store's write lock, when the kill comes.
            var writes = point == "withdrawn"
                ? new List<Task> { doomed.PostJsonAsync("/v1/unload_lora_adapter", new JsonObject { ["lora_name"] = "gone" }) }
                : [doomed.UploadAsync("swap", Replacement, replace: true),
                   doomed.PostJsonAsync("/v1/load_lora_adapter", new JsonObject { ["lora_name"] = "fresh", ["lora_path"] = folder })];
            await doomed.WaitForLogAsync($"Store write paused at {point}", TimeSpan.FromSeconds(60));
            await Task.Delay(300, Ct);                                 // the other write reaches its own pause (or passes it)
            doomed.Kill();
            foreach (var write in writes)
            {
                try { await write; }
                catch (HttpRequestException) { }                       // no answer: killed mid-request
            }
        }

        await using var restarted = await ChildServer.StartAsync(dataRoot, []);
        var listed = (await restarted.GetJsonAsync("/v1/adapters"))["data"]!.AsArray()
            .ToDictionary(a => (string)a!["name"]!, a => (string)a!["content_hash"]!);

        var whole = new Dictionary<string, TestAdapter[]>
        {
            ["swap"] = point is "renamed" ? [Previous, Replacement] : [Previous],   // before the rename, the previous version must serve
            ["fresh"] = [ByPath],
            ["gone"] = [Unloaded],
        };
        Assert.True(listed.ContainsKey("swap"), $"the replaced adapter must still be served: {string.Join(", ", listed.Keys)}");
        if (point == "withdrawn") Assert.False(listed.ContainsKey("gone"), "an unload made durable stays unloaded after the crash");
        else Assert.True(listed.ContainsKey("gone"));
        foreach (var (name, hash) in listed)
        {
            Assert.True(whole.ContainsKey(name), $"unexpected adapter '{name}'");
            var match = whole[name].SingleOrDefault(a => Hash(a) == hash);
            Assert.True(match is not null, $"{name} is listed with {hash}, which is no whole version of it");

            // What it serves equals that whole version uploaded afresh under another name.
            string reference = "ref-" + name;
            await restarted.UploadAsync(reference, match!, replace: false);
            var served = await restarted.CompleteAsync(name);
            var expected = await restarted.CompleteAsync(reference);
            Assert.Equal(expected, served);
        }

        string store = seeded.DataDirectory;
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(store, "tmp")));
        if (point != "withdrawn") Assert.Contains("Removing staging leftover", restarted.Log);
        foreach (var versions in Directory.EnumerateDirectories(Path.Combine(store, "adapters")).SelectMany(Directory.EnumerateDirectories))
            Assert.True(File.Exists(Path.Combine(versions, AdapterManifest.FileName)), $"{versions} has no manifest after the restart");
    }
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class StoreCrashCollection
{
    public const string Name = "StoreCrash";
}

/// <summary>The built server dll (<c>dotnet AdapterServe.Server.dll</c>) as a child process on the tiny model, on a free loopback port.</summary>
internal sealed class ChildServer : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _log = new();
    private readonly HttpClient _client;

    private ChildServer(Process process, int port)
    {
        _process = process;
        _client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}"), Timeout = TimeSpan.FromSeconds(120) };
        _client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "sk-crash-admin");
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    public string Log { get { lock (_log) return _log.ToString(); } }

    public static async Task<ChildServer> StartAsync(string dataRoot, Dictionary<string, string> environment)
    {
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0)) { probe.Start(); port = ((IPEndPoint)probe.LocalEndpoint).Port; probe.Stop(); }
        string dll = Path.Combine(AppContext.BaseDirectory, "AdapterServe.Server.dll");
        var info = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet")
        {
            UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        foreach (var arg in new[] { dll, "--model", TinyModel.Directory, "--served-model-name", TinyModel.Id, "--port", port.ToString(CultureInfo.InvariantCulture),
                     "--data-dir", dataRoot, "--admin-key", "sk-crash-admin", "--max-context", "128" })
            info.ArgumentList.Add(arg);
        foreach (var (k, v) in environment) info.Environment[k] = v;
        var server = new ChildServer(Process.Start(info)!, port);
        var deadline = DateTime.UtcNow.AddSeconds(120);
        while (true)
        {
            if (server._process.HasExited) throw new InvalidOperationException($"the server exited with {server._process.ExitCode}:\n{server.Log}");
            try
            {
                using var health = await server._client.GetAsync("/health", Ct);
                if (health.StatusCode == HttpStatusCode.OK) return server;
            }
            catch (HttpRequestException) { }
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"the server did not become healthy:\n{server.Log}");
            await Task.Delay(100, Ct);
        }
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public async Task WaitForLogAsync(string text, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!Log.Contains(text, StringComparison.Ordinal))
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"no '{text}' in the log:\n{Log}");
            await Task.Delay(20, Ct);
        }
    }

    public void Kill()
    {
        _process.Kill();                                   // SIGKILL on Unix: no shutdown code runs
        _process.WaitForExit();
    }

    public async Task UploadAsync(string name, TestAdapter adapter, bool replace)
    {
        using var form = AdapterApiHost.Form(name, adapter.Files().Select(f => (f.Name, (string?)f.Name, f.Bytes)));
        using var response = await _client.PostAsync("/v1/adapters" + (replace ? "?replace=true" : ""), form, Ct);
        Assert.True(response.IsSuccessStatusCode, $"upload {name}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync(Ct)}");
    }

    public async Task PostJsonAsync(string path, JsonObject body)
    {
        using var response = await _client.PostAsync(path, new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"), Ct);
        Assert.True(response.IsSuccessStatusCode, $"{path}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync(Ct)}");
    }

    public async Task<JsonNode> GetJsonAsync(string path)
    {
        using var response = await _client.GetAsync(path, Ct);
        string text = await response.Content.ReadAsStringAsync(Ct);
        Assert.True(response.IsSuccessStatusCode, $"{path}: {(int)response.StatusCode} {text}");
        return JsonNode.Parse(text)!;
    }

    /// <summary>A greedy 12-token completion on <paramref name="model"/>; returns its text.</summary>
    public async Task<string> CompleteAsync(string model)
    {
        var body = new JsonObject { ["model"] = model, ["prompt"] = "The cat sat", ["max_tokens"] = 12, ["temperature"] = 0, ["ignore_eos"] = true };
        using var response = await _client.PostAsync("/v1/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json"), Ct);
        string text = await response.Content.ReadAsStringAsync(Ct);
        Assert.True(response.IsSuccessStatusCode, $"completion on {model}: {(int)response.StatusCode} {text}");
        return (string)JsonNode.Parse(text)!["choices"]![0]!["text"]!;
    }

    public async ValueTask DisposeAsync()
    {
        _client.Dispose();
        if (!_process.HasExited) Kill();
        _process.Dispose();
        await Task.CompletedTask;
    }
}
