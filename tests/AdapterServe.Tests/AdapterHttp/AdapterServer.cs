using System.Globalization;
using System.Net.Http.Headers;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Engine;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Server;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.AdapterHttp;

/// <summary>
/// The whole server (<c>Program</c>: engine, adapter registry, residency cache, store, endpoints) on the tiny synthetic
/// model, with an admin key and its own temporary data directory.
/// </summary>
public sealed class AdapterServer : IAsyncDisposable
{
    public const string AdminKey = "sk-admin-http";
    public const string UserKey = "sk-user-http";
    public const string Base = TinyModel.Id;

    private readonly TempDir _data;

    private AdapterServer(ServerFactory factory, TempDir data)
    {
        Factory = factory;
        _data = data;
        Client = factory.CreateClient();
        Engine = factory.Services.GetRequiredService<IGenerationEngine>();
    }

    public ServerFactory Factory { get; }
    public HttpClient Client { get; }
    public IGenerationEngine Engine { get; }
    public string DataDirectory => _data.Path;

    /// <param name="settings">More configuration (e.g. <c>Adapters:Residency:MaxDeviceAdapters</c>); a null value removes a default one.</param>
    /// <param name="userKeys">Guard <c>/v1/*</c> with the ordinary key <see cref="UserKey"/>.</param>
    public static async Task<AdapterServer> StartAsync(IDictionary<string, string?>? settings = null, bool userKeys = false)
    {
        var data = new TempDir();
        var all = TinyModel.Settings();
        all["Adapters:DataDirectory"] = data.Path;
        all["admin-key"] = AdminKey;                 // what the --admin-key flag sets
        if (userKeys) all["Server:ApiKeys:0"] = UserKey;
        foreach (var (k, v) in settings ?? new Dictionary<string, string?>())
        {
            if (v is null) all.Remove(k);     // null = leave the setting out (the factory passes settings as arguments)
            else all[k] = v;
        }
        var server = new AdapterServer(new ServerFactory(all), data);
        await TinyModel.WaitUntilReadyAsync(server.Engine);
        return server;
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await Factory.DisposeAsync();
        _data.Dispose();
    }

    // ---- adapter API ----

    public async Task<(int Status, JsonNode? Body)> UploadAsync(string name, TestAdapter adapter, bool replace = false, string? key = AdminKey)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/adapters" + (replace ? "?replace=true" : ""))
        {
            Content = AdapterApiHost.Form(name, adapter.Files().Select(f => (f.Name, (string?)f.Name, f.Bytes))),
        };
        if (key is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return await SendAsync(request);
    }

    /// <summary>Uploads and asserts it was stored (201 new, 200 replaced).</summary>
    public async Task UploadOkAsync(string name, TestAdapter adapter, bool replace = false)
    {
        var (status, body) = await UploadAsync(name, adapter, replace);
        Assert.True(status == (replace ? 200 : 201), $"upload of '{name}': {status} {body?.ToJsonString()}");
    }

    public Task<(int Status, JsonNode? Body)> DeleteAsync(string name, bool wait = false, string? key = AdminKey) =>
        SendAsync(Message(HttpMethod.Delete, $"/v1/adapters/{name}" + (wait ? "?wait=true" : ""), key));

    public Task<(int Status, JsonNode? Body)> GetAsync(string path, string? key = null) => SendAsync(Message(HttpMethod.Get, path, key));

    public Task<(int Status, JsonNode? Body)> SendAdminAsync(HttpMethod method, string path, string? key = AdminKey) => SendAsync(Message(method, path, key));

    /// <summary>Polls <paramref name="condition"/> until it holds (fails after a generous deadline instead of hanging).</summary>
    public async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail("the condition did not hold within 60 s");
            await Task.Delay(10, TestContext.Current.CancellationToken);
        }
    }

    /// <summary>vLLM's <c>POST /v1/load_lora_adapter</c>; the answer is text on success.</summary>
    public async Task<(int Status, string Text)> LoadLoraAdapterAsync(string name, string path, bool inplace, string? key = AdminKey)
    {
        var body = new JsonObject { ["lora_name"] = name, ["lora_path"] = path, ["load_inplace"] = inplace };
        using var request = Message(HttpMethod.Post, "/v1/load_lora_adapter", key);
        request.Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json");
        using var response = await Client.SendAsync(request, TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }

    // ---- generation ----

    public Task<(int Status, JsonNode? Body)> PostAsync(string path, string json, string? key = null) => Http.PostAsync(Client, path, json, key);

    /// <summary>A greedy completion; asserts 200 and returns its one choice.</summary>
    public async Task<Completion> CompleteAsync(GreedyRequest request, string? key = null)
    {
        var (status, body) = await PostAsync("/v1/completions", request.Json(), key);
        Assert.True(status == 200, $"{request.Json()} → {status} {body?.ToJsonString()}");
        return Completion.FromResponse(body!);
    }

    /// <summary>Starts a streamed completion: returns once the response headers (sent with the first event) arrived.</summary>
    public async Task<CompletionStream> OpenStreamAsync(GreedyRequest request)
    {
        var message = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(request.Json(stream: true), Encoding.UTF8, "application/json") };
        var response = await Client.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, TestContext.Current.CancellationToken);
        message.Dispose();
        if ((int)response.StatusCode != 200)
        {
            string text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
            response.Dispose();
            Assert.Fail($"stream {request.Json(stream: true)} → {(int)response.StatusCode} {text}");
        }
        var body = await response.Content.ReadAsStreamAsync(TestContext.Current.CancellationToken);
        return new CompletionStream(response, body);
    }

    /// <summary>A streamed completion read to the end.</summary>
    public async Task<Completion> StreamAsync(GreedyRequest request)
    {
        await using var stream = await OpenStreamAsync(request);
        return await stream.ReadToEndAsync();
    }

    internal Task<Metrics> MetricsAsync() => Metrics.ReadAsync(Client);

    private static HttpRequestMessage Message(HttpMethod method, string path, string? key)
    {
        var request = new HttpRequestMessage(method, path);
        if (key is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return request;
    }

    private async Task<(int Status, JsonNode? Body)> SendAsync(HttpRequestMessage request)
    {
        using var response = await Client.SendAsync(request, TestContext.Current.CancellationToken);
        string text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        JsonNode? body = null;
        if (text.Length > 0)
        {
            try { body = JsonNode.Parse(text); }
            catch (System.Text.Json.JsonException) { body = JsonValue.Create(text); }
        }
        return ((int)response.StatusCode, body);
    }
}

/// <summary>A greedy <c>/v1/completions</c> request with per-token logprobs; <paramref name="Adapters"/> is the extension's JSON array.</summary>
public sealed record GreedyRequest(string Model, string Prompt, int MaxTokens, string? Adapters = null)
{
    public string Json(bool stream = false)
    {
        var body = new JsonObject
        {
            ["model"] = Model, ["prompt"] = Prompt, ["max_tokens"] = MaxTokens, ["temperature"] = 0, ["ignore_eos"] = true, ["logprobs"] = 0,
        };
        if (Adapters is not null) body["adapters"] = JsonNode.Parse(Adapters);
        if (stream) body["stream"] = true;
        return body.ToJsonString();
    }
}

/// <summary>One choice of a completion: its text, its tokens and their logprobs.</summary>
public sealed record Completion(string Text, IReadOnlyList<string> Tokens, IReadOnlyList<double> Logprobs, string? FinishReason)
{
    public static Completion FromResponse(JsonNode body)
    {
        var choice = Assert.Single(body["choices"]!.AsArray())!;
        var lp = choice["logprobs"]!;
        return new Completion((string)choice["text"]!,
            lp["tokens"]!.AsArray().Select(t => (string)t!).ToList(),
            lp["token_logprobs"]!.AsArray().Select(t => (double)t!).ToList(),
            (string?)choice["finish_reason"]);
    }

    /// <summary>Same greedy tokens and text; logprobs equal up to batching round-off.</summary>
    public void AssertSameAs(Completion expected, string what)
    {
        Assert.True(expected.Tokens.SequenceEqual(Tokens),
            $"{what}: tokens differ\n expected: {string.Join('|', expected.Tokens)}\n   actual: {string.Join('|', Tokens)}");
        Assert.Equal(expected.Text, Text);
        Assert.Equal(expected.FinishReason, FinishReason);
        for (int i = 0; i < Logprobs.Count; i++)
            Assert.True(Math.Abs(expected.Logprobs[i] - Logprobs[i]) <= 1e-4,
                $"{what}: logprob {i} {Logprobs[i].ToString(CultureInfo.InvariantCulture)} vs {expected.Logprobs[i].ToString(CultureInfo.InvariantCulture)}");
    }
}

/// <summary>A streamed completion being read chunk by chunk (<see cref="SseParser"/>).</summary>
public sealed class CompletionStream(HttpResponseMessage response, Stream body) : IAsyncDisposable
{
    private readonly IAsyncEnumerator<SseItem<string>> _items = SseParser.Create(body).EnumerateAsync(TestContext.Current.CancellationToken).GetAsyncEnumerator(TestContext.Current.CancellationToken);
    private readonly StringBuilder _text = new();
    private readonly List<string> _tokens = [];
    private readonly List<double> _logprobs = [];
    private string? _finish;
    private bool _done;

    /// <summary>Tokens received so far.</summary>
    public int TokensRead => _tokens.Count;

    /// <summary>Reads until at least <paramref name="tokens"/> tokens arrived.</summary>
    public async Task ReadTokensAsync(int tokens)
    {
        while (_tokens.Count < tokens)
            if (!await NextAsync()) throw new InvalidOperationException($"the stream ended after {_tokens.Count} tokens");
    }

    public async Task<Completion> ReadToEndAsync()
    {
        while (await NextAsync()) { }
        Assert.NotNull(_finish);
        return new Completion(_text.ToString(), _tokens, _logprobs, _finish);
    }

    private async Task<bool> NextAsync()
    {
        if (_done) return false;
        if (!await _items.MoveNextAsync()) throw new InvalidOperationException("the stream ended without [DONE]");
        string data = _items.Current.Data;
        if (data == "[DONE]") { _done = true; return false; }
        var chunk = JsonNode.Parse(data)!;
        Assert.Null(chunk["error"]);
        var choice = Assert.Single(chunk["choices"]!.AsArray())!;
        _text.Append((string?)choice["text"]);
        if (choice["logprobs"] is { } lp)
        {
            _tokens.AddRange(lp["tokens"]!.AsArray().Select(t => (string)t!));
            _logprobs.AddRange(lp["token_logprobs"]!.AsArray().Select(t => (double)t!));
        }
        if ((string?)choice["finish_reason"] is { } reason) _finish = reason;
        return true;
    }

    public async ValueTask DisposeAsync()
    {
        await _items.DisposeAsync();
        await body.DisposeAsync();
        response.Dispose();
    }
}

/// <summary>
/// The independent reference: a second, freshly started server on the same base model where every adapter is
/// registered under its own name and every request runs alone (one at a time). Shared by the adapter HTTP tests.
/// </summary>
public sealed class ReferenceServer : IAsyncLifetime
{
    private readonly SemaphoreSlim _alone = new(1, 1);
    private readonly Dictionary<string, string> _stored = [];     // reference name → content of the adapter files
    private AdapterServer _server = null!;

    public async ValueTask InitializeAsync() => _server = await AdapterServer.StartAsync();

    public async ValueTask DisposeAsync() => await _server.DisposeAsync();

    /// <summary>
    /// The completion of <paramref name="request"/> run alone, with <paramref name="adapter"/> (null = the base) stored here
    /// under <paramref name="referenceName"/> and named by <c>model</c>.
    /// </summary>
    public async Task<Completion> AloneAsync(string? referenceName, TestAdapter? adapter, GreedyRequest request)
    {
        await _alone.WaitAsync(TestContext.Current.CancellationToken);
        try
        {
            if (referenceName is not null)
            {
                string content = Convert.ToBase64String(adapter!.ConfigBytes()) + ":" + Convert.ToBase64String(adapter.SafetensorsBytes());
                if (_stored.TryGetValue(referenceName, out var stored))
                    Assert.True(stored == content, $"reference name '{referenceName}' was used for two different adapters");
                else
                {
                    await _server.UploadOkAsync(referenceName, adapter);
                    _stored[referenceName] = content;
                }
            }
            return await _server.CompleteAsync(request with { Model = referenceName ?? AdapterServer.Base, Adapters = null });
        }
        finally { _alone.Release(); }
    }
}

[CollectionDefinition(Name)]
public sealed class AdapterHttpCollection : ICollectionFixture<ReferenceServer>
{
    public const string Name = "AdapterHttp";
}

/// <summary>Random LoRA adapters for the tiny server model: every projection, so that they change the greedy output.</summary>
public static class TinyAdapters
{
    public static TestAdapter Lora(int seed, int r = 4) =>
        TestAdapter.Lora(r: r, alpha: 2 * r, projections: AdapterServe.Modeling.ProjectionNames.All, seed: seed, baseModel: TinyModel.Config);

    /// <summary>
    /// One plain LoRA equal to <c>Σ wᵢ·ΔWᵢ</c>, built independently of the server: the ranks are stacked
    /// (<c>A = [A₁; A₂; …]</c>, <c>B = [w₁s₁B₁, w₂s₂B₂, …]</c> with sᵢ = alphaᵢ/rᵢ) and the new scaling is 1 (alpha = r).
    /// Every part must adapt the same modules with a uniform rank and no rsLoRA/DoRA.
    /// </summary>
    public static TestAdapter WeightedSum(params (TestAdapter Adapter, float Weight)[] parts)
    {
        int rank = parts.Sum(p => p.Adapter.Config["r"]!.GetValue<int>());
        var sum = new TestAdapter { Config = parts[0].Adapter.Config.DeepClone().AsObject() };
        sum.Config["r"] = rank;
        sum.Config["lora_alpha"] = rank;
        foreach (var a in parts[0].Adapter.Tensors.Where(t => t.Name.EndsWith(".lora_A.weight", StringComparison.Ordinal)))
        {
            string module = a.Name[..^".lora_A.weight".Length];
            var As = parts.Select(p => p.Adapter.Tensors.Single(t => t.Name == module + ".lora_A.weight")).ToList();
            var Bs = parts.Select(p => p.Adapter.Tensors.Single(t => t.Name == module + ".lora_B.weight")).ToList();
            long dIn = a.Shape[1], dOut = Bs[0].Shape[0];
            sum.Tensors.Add(new TestTensor(a.Name, [rank, dIn], As.SelectMany(t => t.Values).ToArray()));    // [Σr, d_in]: rows stacked
            var b = new float[dOut * rank];                                                                  // [d_out, Σr]: columns side by side
            for (long o = 0; o < dOut; o++)
            {
                int column = 0;
                for (int i = 0; i < parts.Length; i++)
                {
                    var config = parts[i].Adapter.Config;
                    int r = config["r"]!.GetValue<int>();
                    float factor = parts[i].Weight * (float)(config["lora_alpha"]!.GetValue<double>() / r);
                    for (int k = 0; k < r; k++) b[o * rank + column + k] = factor * Bs[i].Values[o * r + k];
                    column += r;
                }
            }
            sum.Tensors.Add(new TestTensor(module + ".lora_B.weight", [dOut, rank], b));
        }
        return sum;
    }

    /// <summary>Writes the adapter's PEFT folder under <paramref name="root"/> (for <c>load_lora_adapter</c>).</summary>
    public static string Folder(TestAdapter adapter, TempDir root, string name) => adapter.WriteTo(root.Sub(name));
}
