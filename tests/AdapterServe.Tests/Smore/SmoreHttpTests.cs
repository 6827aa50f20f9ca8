using System.Globalization;
using System.Net.Http.Headers;
using System.Text.Json.Nodes;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterHttp;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Modeling;
using AdapterServe.Tests.Server;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Smore;

/// <summary>
/// S'MoRE through the whole server on the tiny model: upload, path registration, just-in-time loading, the listing,
/// completions against the naive recursive tree, mixed concurrent batches, expert counters, and bad files.
/// </summary>
public sealed class SmoreHttpTests
{
    private static readonly Projection[] Mlp = [Projection.Gate, Projection.Up, Projection.Down];
    private static readonly SmoreShape TwoByFour = new([4, 4], [2, 2], [3, 2], [8, 8], DownDim: 8, GateType: "noisy_topk", ExpertAct: "tanh");
    private static readonly int[] Prompt = [11, 42, 7, 99, 5];
    private const int MaxTokens = 5;

    private static SmoreTestAdapter Tree(int seed, SmoreShape? shape = null) =>
        new(shape ?? TwoByFour, TinyModel.Config, [.. Enumerable.Range(0, TinyModel.Config.NumHiddenLayers).SelectMany(l => Mlp.Select(p => (l, p)))], seed);

    private static IEnumerable<(string Part, string? FileName, byte[] Bytes)> Files(SmoreTestAdapter adapter, TempDir tmp)
    {
        string dir = adapter.Write(tmp.Sub("upload-" + Guid.NewGuid().ToString("N")[..6]));
        return Directory.GetFiles(dir).Select(f => ("file", (string?)Path.GetFileName(f), File.ReadAllBytes(f)));
    }

    private static async Task<(int Status, JsonNode? Body)> UploadAsync(AdapterServer server, string name, SmoreTestAdapter adapter, TempDir tmp, bool replace = false)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/adapters" + (replace ? "?replace=true" : ""))
        {
            Content = AdapterApiHost.Form(name, Files(adapter, tmp)),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdapterServer.AdminKey);
        using var response = await server.Client.SendAsync(request, TestContext.Current.CancellationToken);
        string text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, text.Length == 0 ? null : JsonNode.Parse(text));
    }

    /// <summary>A greedy completion of <see cref="Prompt"/> (token ids) with per-token logprobs.</summary>
    private static string Request(string model, string? adapters = null, int[]? prompt = null)
    {
        var body = new JsonObject
        {
            ["model"] = model, ["prompt"] = new JsonArray([.. (prompt ?? Prompt).Select(t => (JsonNode)t)]), ["max_tokens"] = MaxTokens,
            ["temperature"] = 0, ["ignore_eos"] = true, ["logprobs"] = 0,
        };
        if (adapters is not null) body["adapters"] = JsonNode.Parse(adapters);
        return body.ToJsonString();
    }

    private static async Task<Completion> CompleteAsync(AdapterServer server, string json)
    {
        var (status, body) = await server.PostAsync("/v1/completions", json);
        Assert.True(status == 200, $"{json} → {status} {body?.ToJsonString()}");
        return Completion.FromResponse(body!);
    }

    /// <summary>Greedy tokens and their logprobs from the naive float64 model with <paramref name="delta"/> on its projections.</summary>
    private static (List<int> Tokens, List<double> Logprobs) NaiveGreedy(NaiveLlama naive, Func<string, Tensor, Tensor, Tensor>? delta, int[]? prompt = null)
    {
        var seq = (prompt ?? Prompt).ToList();
        var tokens = new List<int>();
        var logprobs = new List<double>();
        for (int i = 0; i < MaxTokens; i++)
        {
            using var scope = NewDisposeScope();
            var lp = naive.Logits(seq, delta)[-1].log_softmax(-1);                 // [vocab]
            int token = (int)lp.argmax().item<long>();
            tokens.Add(token);
            logprobs.Add(lp[token].item<double>());
            seq.Add(token);
        }
        return (tokens, logprobs);
    }

    private static void AssertNaive(AdapterServer server, (List<int> Tokens, List<double> Logprobs) expected, Completion actual, string what)
    {
        Assert.Equal(server.Engine.Tokenizer.Decode(expected.Tokens), actual.Text);
        Assert.Equal(expected.Logprobs.Count, actual.Logprobs.Count);
        for (int i = 0; i < expected.Logprobs.Count; i++)
            Assert.True(Math.Abs(expected.Logprobs[i] - actual.Logprobs[i]) <= 1e-5,
                $"{what}: logprob {i}: server {actual.Logprobs[i].ToString(CultureInfo.InvariantCulture)}, naive {expected.Logprobs[i].ToString(CultureInfo.InvariantCulture)}");
    }

    private static JsonObject Listed(JsonNode list, string name) =>
        list["data"]!.AsArray().Single(a => (string?)a!["name"] == name)!.AsObject();

    [Fact]
    public async Task Uploaded_and_path_registered_smore_loads_just_in_time_is_listed_and_answers_like_the_naive_tree()
    {
        using var tmp = new TempDir();
        await using var server = await AdapterServer.StartAsync();
        string name = "tree-" + Guid.NewGuid().ToString("N")[..8], byPath = name + "-path";   // expert counters are process-wide
        var tree = Tree(seed: 81);

        var (status, body) = await UploadAsync(server, name, tree, tmp);
        Assert.True(status == 201, $"{status} {body?.ToJsonString()}");
        Assert.Equal("smore", (string?)body!["kind"]);
        Assert.Equal(tree.Tensors.Values.Sum(t => t.NumberOfElements * 4), (long)body["bytes"]!);
        Assert.Equal(["gate_proj", "up_proj", "down_proj"], body["target_modules"]!.AsArray().Select(m => (string)m!));
        Assert.Equal(3, (int)body["rank"]!);                                         // the largest expert rank

        // Nothing is loaded before a request names it; the first request loads it (just in time).
        var (_, list) = await server.GetAsync("/v1/adapters");
        var listed = Listed(list!, name);
        Assert.Equal("smore", (string?)listed["kind"]);
        Assert.Equal("stored", (string?)listed["status"]);
        string[] expertLabels = ["l0.0", "l0.1", "l0.2", "l0.3", "l1.0", "l1.1", "l1.2", "l1.3"];
        Assert.Equal(expertLabels, listed["experts"]!.AsArray().Select(e => (string)e!));
        Assert.Equal(4, (int)listed["top_k"]!);                                      // leaf paths per token: 2 · 2
        Assert.Equal((long)body["bytes"]!, (long)listed["bytes"]!);

        using var naive = new NaiveLlama(TinyModel.Directory);
        var fed = new Dictionary<(string Module, string Expert), long>();
        var routed = new Dictionary<string, long>();
        var expected = NaiveGreedy(naive, SmoreServingTests.SmoreDelta(tree, 1));
        var answer = await CompleteAsync(server, Request(name));
        AssertNaive(server, expected, answer, "uploaded");
        Assert.NotEqual(NaiveGreedy(naive, null).Logprobs, expected.Logprobs);        // the tree changes the answer

        (_, list) = await server.GetAsync("/v1/adapters");
        listed = Listed(list!, name);
        Assert.Equal("device", (string?)listed["status"]);
        Assert.Equal(1, (long)listed["load_count"]!);
        Assert.True((long)listed["resident_bytes"]! > 0);

        // Per module the inspection shows the tree's shape.
        var (_, info) = await server.GetAsync($"/v1/adapters/{name}");
        var module = info!["modules"]!.AsArray().First()!;
        Assert.Equal(2, (int)module["levels"]!);
        Assert.Equal(8, (int)module["experts"]!);
        Assert.Equal(4, (int)module["top_k"]!);                                      // leaf paths per token: 2 · 2
        Assert.Equal("noisy_topk", (string?)module["gate_type"]);

        // Registered by path (vLLM's load_lora_adapter): the same answer.
        var (pathStatus, pathText) = await server.LoadLoraAdapterAsync(byPath, tree.Write(tmp.Sub("by-path")), inplace: false);
        Assert.True(pathStatus == 200, pathText);
        (await CompleteAsync(server, Request(byPath))).AssertSameAs(answer, "registered by path");

        // The counters: every position that ran through the model (the prompt and the fed-back tokens) once.
        var ran = Prompt.Concat(expected.Tokens.Take(MaxTokens - 1)).ToList();
        naive.Logits(ran, SmoreServingTests.SmoreDelta(tree, 1, (m, selected) =>
        {
            routed[m] = routed.GetValueOrDefault(m) + 1;
            for (int l = 0; l < selected.Length; l++)
                foreach (int e in selected[l]) fed[(m, $"l{l}.{e}")] = fed.GetValueOrDefault((m, $"l{l}.{e}")) + 1;
        }));
        var metrics = await server.MetricsAsync();
        var (expertsStatus, usage) = await server.GetAsync($"/v1/adapters/{name}/experts");
        Assert.Equal(200, expertsStatus);
        Assert.Equal(expertLabels, usage!["experts"]!.AsArray().Select(e => (string)e!));
        Assert.Equal(4, (int)usage["top_k"]!);
        var modules = usage["modules"]!.AsArray();
        Assert.Equal(TinyModel.Config.NumHiddenLayers * Mlp.Length, modules.Count);
        foreach (var m in modules)
        {
            string path = ProjectionNames.ModulePath((int)m!["layer"]!, Mlp.Single(p => p.ShortName() == (string?)m["module"]));
            Assert.Equal(routed[path], (long)m["routed_tokens"]!);
            foreach (var e in m["experts"]!.AsArray())
                Assert.Equal(fed.GetValueOrDefault((path, (string)e!["expert"]!)), (long)e["selections"]!);
        }
        for (int layer = 0; layer < TinyModel.Config.NumHiddenLayers; layer++)
            foreach (var p in Mlp)
            {
                string path = ProjectionNames.ModulePath(layer, p), labels = $"adapter=\"{name}\",layer=\"{layer}\",module=\"{p.ShortName()}\"";
                Assert.Equal(routed[path], metrics.Value($"adapterserve_expert_routed_tokens_total{{{labels}}}"));
                Assert.Equal(ran.Count, routed[path]);
                for (int l = 0; l < TwoByFour.Levels; l++)
                    for (int e = 0; e < TwoByFour.Experts[l]; e++)
                        Assert.Equal(fed.GetValueOrDefault((path, $"l{l}.{e}")), metrics.Value($"adapterserve_expert_selections_total{{{labels},expert=\"l{l}.{e}\"}}"));
            }
    }

    [Fact]
    public async Task Concurrent_requests_on_smore_lora_a_scaled_smore_and_the_base_each_get_their_solo_answer()
    {
        using var tmp = new TempDir();
        await using var server = await AdapterServer.StartAsync();
        var tree = Tree(seed: 82);
        var deep = Tree(seed: 83, new SmoreShape([3, 4, 2], [2, 1, 2], [2, 2, 3], [6, 5, 4], DownDim: 0, GateType: "switch", ExpertAct: "relu", Alpha: [4, 2, 6]));
        Assert.Equal(201, (await UploadAsync(server, "tree", tree, tmp)).Status);
        Assert.Equal(201, (await UploadAsync(server, "deep", deep, tmp)).Status);
        await server.UploadOkAsync("lora", TinyAdapters.Lora(seed: 84));

        string[] requests =
        [
            Request("tree"),
            Request("lora", prompt: [3, 1, 4, 1, 5, 9]),
            Request(AdapterServer.Base, prompt: [2, 7, 1, 8]),
            Request("tree", """[{"name":"lora","scale":0.5}]""", prompt: [6, 6, 6]),
            Request(AdapterServer.Base, """[{"name":"deep","scale":1.5}]"""),
            Request("deep", prompt: [100, 200, 300, 17, 23, 5, 8]),
        ];
        var solo = new List<Completion>();
        foreach (var r in requests) solo.Add(await CompleteAsync(server, r));
        var together = await Task.WhenAll(requests.Select(r => CompleteAsync(server, r)));

        // And the scaled S'MoRE + LoRA request is the naive model's answer.
        using var naive = new NaiveLlama(TinyModel.Directory);
        var lora = TinyAdapters.Lora(seed: 84);
        AssertNaive(server, NaiveGreedy(naive, (m, x, y) => SmoreServingTests.LoraDelta(lora, 0.5)(m, x, SmoreServingTests.SmoreDelta(tree, 1)(m, x, y)), [6, 6, 6]),
            together[3], "tree + 0.5 lora");
        AssertNaive(server, NaiveGreedy(naive, SmoreServingTests.SmoreDelta(deep, 1.5)), together[4], "1.5 deep");
    }

    public static TheoryData<string, string> BadFiles() => new()
    {
        { "gate_type", "'gate_type'" },
        { "expert_act_fn", "'expert_act_fn'" },
        { "num_active", "'num_active'" },
        { "shape", "moe_B.1" },
        { "nan", "NaN" },
    };

    [Theory]
    [MemberData(nameof(BadFiles))]
    public async Task A_bad_replacement_is_400_naming_the_field_or_tensor_and_the_stored_version_keeps_serving(string fault, string named)
    {
        using var tmp = new TempDir();
        await using var server = await AdapterServer.StartAsync();
        var good = Tree(seed: 85);
        Assert.Equal(201, (await UploadAsync(server, "tree", good, tmp)).Status);
        var before = await CompleteAsync(server, Request("tree"));

        var bad = Tree(seed: 86);
        string prefix = SmoreTestAdapter.Prefix(1, Projection.Up);
        switch (fault)
        {
            case "gate_type": bad.Config["gate_type"] = "softmax_topk"; break;
            case "expert_act_fn": bad.Config["expert_act_fn"] = "gelu"; break;
            case "num_active": bad.Config["num_active"] = new JsonArray(5, 2); break;
            case "shape": bad.Tensors[$"{prefix}.moe_B.1"] = zeros(4, 7, 2); break;  // d_2 = 4·3 + 4·2 = 20, not 7: levels that do not chain
            default: bad.Tensors[$"{prefix}.moe_A.0"].view(-1)[0].fill_(float.NaN); break;
        }
        var (status, body) = await UploadAsync(server, "tree", bad, tmp, replace: true);
        Assert.Equal(400, status);
        var error = Http.Error(body);
        Assert.Equal("invalid_request_error", (string?)error["type"]);
        Assert.Contains(named, (string)error["message"]!);

        var (_, info) = await server.GetAsync("/v1/adapters/tree");
        Assert.Equal(1, (int)info!["version"]!);
        (await CompleteAsync(server, Request("tree"))).AssertSameAs(before, "after the refused replacement");
    }
}

/// <summary>S'MoRE on the real stories260K model (../shared/models), through HTTP, next to the real LoRAs zara and forest.</summary>
public sealed class SmoreRealModelHttpTests
{
    private static readonly Projection[] Mlp = [Projection.Gate, Projection.Up, Projection.Down];

    [Fact]
    public async Task A_smore_tree_on_stories260K_answers_like_the_naive_tree_and_batches_with_zara_forest_and_the_base()
    {
        string modelDir = SharedModels.Require("stories260K-hf");
        var baseModel = ModelConfig.Load(Path.Combine(modelDir, "config.json"));
        using var tmp = new TempDir();
        var settings = TinyModel.Settings(modelDir);
        settings["Engine:ServedModelName"] = "stories260K";
        await using var server = await AdapterServer.StartAsync(settings);

        string name = "smore-" + Guid.NewGuid().ToString("N")[..8];
        var tree = new SmoreTestAdapter(new SmoreShape([4, 4], [2, 2], [8, 8], [16, 16], DownDim: 16, GateType: "noisy_topk", ExpertAct: "tanh", Alpha: [16, 16]),
            baseModel, [.. Enumerable.Range(0, baseModel.NumHiddenLayers).SelectMany(l => Mlp.Select(p => (l, p)))], seed: 91);
        // A trained tree nudges the base (its B starts at zero); random full-size outputs on all 15 projections would make
        // the model so sensitive that float32 round-off alone moves logprobs by 1e-3. Scale the output layer down.
        foreach (var key in tree.Tensors.Keys.Where(k => k.EndsWith(".moe_W_final", StringComparison.Ordinal) || k.EndsWith(".moe_W_final_bias", StringComparison.Ordinal)).ToList())
            tree.Tensors[key] = TorchScalars.Mul(tree.Tensors[key], 0.1).DetachFromDisposeScope();
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/adapters"))
        {
            string dir = tree.Write(tmp.Sub("tree"));
            request.Content = AdapterApiHost.Form(name, Directory.GetFiles(dir).Select(f => ("file", (string?)Path.GetFileName(f), File.ReadAllBytes(f))));
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdapterServer.AdminKey);
            using var response = await server.Client.SendAsync(request, TestContext.Current.CancellationToken);
            Assert.True((int)response.StatusCode == 201, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        }
        foreach (var lora in new[] { "zara", "forest" })
        {
            var (status, text) = await server.LoadLoraAdapterAsync(lora, SharedModels.Require("adapters/" + lora), inplace: false);
            Assert.True(status == 200, text);
        }

        int[] prompt = [.. server.Engine.Tokenizer.Encode("Once upon a time")];
        const int maxTokens = 24;
        string Request(string model, string? adapters = null)
        {
            var body = new JsonObject
            {
                ["model"] = model, ["prompt"] = new JsonArray([.. prompt.Select(t => (JsonNode)t)]), ["max_tokens"] = maxTokens,
                ["temperature"] = 0, ["ignore_eos"] = true, ["logprobs"] = 0,
            };
            if (adapters is not null) body["adapters"] = JsonNode.Parse(adapters);
            return body.ToJsonString();
        }
        async Task<Completion> CompleteAsync(string json)
        {
            var (status, body) = await server.PostAsync("/v1/completions", json);
            Assert.True(status == 200, $"{json} → {status} {body?.ToJsonString()}");
            return Completion.FromResponse(body!);
        }

        string[] requests = [Request(name), Request("zara"), Request("stories260K"), Request("forest", $$"""[{"name":"{{name}}","scale":0.5}]"""), Request(name, """[{"name":"zara","scale":1.0}]""")];
        // The tree alone is the naive float64 model with the recursive tree on every MLP projection.
        using var naive = new NaiveLlama(modelDir);
        var seq = prompt.ToList();
        var delta = SmoreServingTests.SmoreDelta(tree, 1);
        var tokens = new List<int>();
        var logprobs = new List<double>();
        for (int i = 0; i < maxTokens; i++)
        {
            using var scope = TorchSharp.torch.NewDisposeScope();
            var lp = naive.Logits(seq, delta)[-1].log_softmax(-1);                 // [vocab]
            int token = (int)lp.argmax().item<long>();
            logprobs.Add(lp[token].item<double>());
            tokens.Add(token);
            seq.Add(token);
        }

        var solo = new List<Completion>();
        foreach (var r in requests) solo.Add(await CompleteAsync(r));
        var together = await Task.WhenAll(requests.Select(CompleteAsync));
        TestContext.Current.SendDiagnosticMessage($"smore: {solo[0].Text}\nzara: {solo[1].Text}\nbase: {solo[2].Text}\nforest+smore: {solo[3].Text}\nsmore+zara: {solo[4].Text}");
        Assert.Contains("Zara", solo[1].Text);
        Assert.NotEqual(solo[2].Text, solo[0].Text);                                 // the tree changes the story

        foreach (var (answer, what) in new[] { (solo[0], "alone"), (together[0], "in the mixed batch") })
        {
            Assert.Equal(server.Engine.Tokenizer.Decode(tokens), answer.Text);
            for (int i = 0; i < maxTokens; i++)
                Assert.True(Math.Abs(logprobs[i] - answer.Logprobs[i]) <= 1e-5,
                    $"{what}: logprob {i}: server {answer.Logprobs[i].ToString(CultureInfo.InvariantCulture)}, naive {logprobs[i].ToString(CultureInfo.InvariantCulture)}");
        }
        for (int i = 0; i < requests.Length; i++) together[i].AssertSameAs(solo[i], $"request {i} in the mixed batch");
    }
}
