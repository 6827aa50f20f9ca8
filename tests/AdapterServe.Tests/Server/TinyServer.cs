using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterServe.Tests.Server;

/// <summary>A tiny random-weight Llama written once per test run by <see cref="SyntheticModel"/> and loaded by the real engine.</summary>
public static class TinyModel
{
    public const string Id = "tiny";
    /// <summary>The context the servers run with (<c>--max-context</c>); the model itself allows <see cref="LongContextLength"/>.</summary>
    public const int ContextLength = 1024;
    public const int LongContextLength = 4096;

    /// <summary>Untied LM head: greedy continuations differ from prompt to prompt (a tied random model repeats one token).</summary>
    public static readonly ModelConfig Config = new()
    {
        HiddenSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 16,
        IntermediateSize = 128, VocabSize = 320, MaxPositionEmbeddings = LongContextLength, RmsNormEps = 1e-5, TieWordEmbeddings = false,
    };

    private static readonly Lazy<string> Written = new(() => Write("model"));

    /// <summary>This run's folder under the temp directory, removed when the test process exits.</summary>
    private static readonly Lazy<string> Root = new(() =>
    {
        string root = Path.Combine(Path.GetTempPath(), "adapterserve-server-tests", Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..8]);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { System.IO.Directory.Delete(root, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        };
        return root;
    });

    public static string Directory => Written.Value;

    /// <summary>Writes a fresh copy (for tests that alter files of it).</summary>
    public static string Write(string name)
    {
        string dir = Path.Combine(Root.Value, Guid.NewGuid().ToString("N"), name);
        SyntheticModel.Write(dir, Config, seed: 5);
        return dir;
    }

    public static Dictionary<string, string?> Settings(string? modelDirectory = null) => new()
    {
        ["Engine:ModelPath"] = modelDirectory ?? Directory,
        ["Engine:ServedModelName"] = Id,
        ["Engine:MaxBatch"] = "32",
        ["Engine:MaxQueue"] = "256",
        ["Engine:MaxTokensPerStep"] = "2048",
        ["Engine:MaxContext"] = ContextLength.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    public static async Task WaitUntilReadyAsync(IGenerationEngine engine)
    {
        var deadline = DateTime.UtcNow.AddSeconds(120);
        while (!engine.IsReady)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("the engine did not load the tiny model within 120 s");
            await Task.Delay(20, TestContext.Current.CancellationToken);
        }
    }
}

/// <summary>One server on the real engine, shared by the tests of the <c>RealServer</c> collection (run one class at a time, so metric deltas are theirs).</summary>
public sealed class RealServer : IAsyncLifetime
{
    public ServerFactory Factory { get; private set; } = null!;
    public HttpClient Client { get; private set; } = null!;
    public IGenerationEngine Engine { get; private set; } = null!;

    public async ValueTask InitializeAsync()
    {
        Factory = new ServerFactory(TinyModel.Settings());
        Client = Factory.CreateClient();
        Engine = Factory.Services.GetRequiredService<IGenerationEngine>();
        await TinyModel.WaitUntilReadyAsync(Engine);
    }

    public async ValueTask DisposeAsync() => await Factory.DisposeAsync();

    public Task<(int Status, JsonNode? Body)> PostAsync(string path, string json) => Http.PostAsync(Client, path, json);
}

[CollectionDefinition(Name)]
public sealed class RealServerCollection : ICollectionFixture<RealServer>
{
    public const string Name = "RealServer";
}

/// <summary>Runs a request on the engine directly, without the HTTP layer: the independent reference for what the server answers.</summary>
public static class DirectEngine
{
    public sealed record Choice(string Text, List<int> Tokens, List<TokenLogprob?> Logprobs, FinishReason Reason, int CompletionTokens, IReadOnlyList<TokenLogprob?>? PromptLogprobs);

    public static async Task<Choice[]> RunAsync(IGenerationEngine engine, IReadOnlyList<int> prompt, SamplingParams sampling, int n = 1, bool promptLogprobs = false)
    {
        var text = Enumerable.Range(0, n).Select(_ => new StringBuilder()).ToArray();
        var tokens = Enumerable.Range(0, n).Select(_ => new List<int>()).ToArray();
        var logprobs = Enumerable.Range(0, n).Select(_ => new List<TokenLogprob?>()).ToArray();
        var prompts = new IReadOnlyList<TokenLogprob?>?[n];
        var finishes = new FinishEvent?[n];
        var request = new GenerationRequest { RequestId = Guid.NewGuid().ToString("N"), PromptTokens = prompt, Sampling = sampling, N = n, PromptLogprobs = promptLogprobs };
        await foreach (var e in engine.Submit(request, TestContext.Current.CancellationToken).ReadAllAsync(TestContext.Current.CancellationToken))
        {
            switch (e)
            {
                case TokenEvent t: text[t.Index].Append(t.Text); tokens[t.Index].Add(t.TokenId); logprobs[t.Index].Add(t.Logprob); break;
                case PromptLogprobsEvent p: prompts[p.Index] = p.Tokens; break;
                case FinishEvent f: text[f.Index].Append(f.Text); finishes[f.Index] = f; break;
            }
        }
        return Enumerable.Range(0, n).Select(i => new Choice(text[i].ToString(), tokens[i], logprobs[i], finishes[i]!.Reason, finishes[i]!.CompletionTokens, prompts[i])).ToArray();
    }

    public static SamplingParams Greedy(int maxTokens, int? logprobs = null, IReadOnlyList<string>? stop = null) =>
        new() { Temperature = 0, MaxTokens = maxTokens, Logprobs = logprobs, IgnoreEos = true, StopStrings = stop ?? [] };
}
