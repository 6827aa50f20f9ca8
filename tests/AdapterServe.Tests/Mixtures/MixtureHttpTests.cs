using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterServe.Bench.Adapters;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using AdapterServe.Tests.AdapterHttp;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Server;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Mixtures;

/// <summary>
/// LoRA-Mixer and OMoE through the whole server: upload (loose files and archive), path registration, just-in-time
/// loading, the listing, the experts endpoint, the load-balance gauge, expert protection and expert hot swap.
/// </summary>
public sealed class MixtureHttpTests
{
    static readonly string[] ExpertNames = ["e-zara", "e-forest", "e-sea"];
    /// <summary>The counted mixer's name, used by no other test: expert counters are per process (Prometheus' registry), so a name shared with another test's server would add its counts.</summary>
    const string Mix = "mix-counted";

    static async Task<(int Status, JsonNode? Body)> UploadFilesAsync(AdapterServer server, string name, IEnumerable<(string Part, byte[] Bytes)> parts, bool replace = false)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/adapters" + (replace ? "?replace=true" : ""))
        {
            Content = AdapterApiHost.Form(name, parts.Select(p => (p.Part, (string?)Path.GetFileName(p.Part), p.Bytes))),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdapterServer.AdminKey);
        using var response = await server.Client.SendAsync(request, TestContext.Current.CancellationToken);
        string text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, text.Length > 0 ? JsonNode.Parse(text) : null);
    }

    /// <summary>The files of a folder as (relative path, bytes), '/'-separated.</summary>
    static IEnumerable<(string Name, byte[] Bytes)> FilesOf(string directory) =>
        Directory.EnumerateFiles(directory, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .Select(f => (Path.GetRelativePath(directory, f).Replace(Path.DirectorySeparatorChar, '/'), File.ReadAllBytes(f)));

    /// <summary>A mixer over <see cref="ExpertNames"/>: routers only (the experts are registered) or with the experts embedded.</summary>
    static string WriteMixer(TempDir tmp, string name, TestAdapter[]? embedded, int seed = 31, int topK = 2)
    {
        string dir = tmp.Sub(name);
        MixtureWriters.WriteLoraMixer(dir, TinyModel.Config, experts: ExpertNames.Length, topK: topK, rank: 4, ProjectionNames.All, seed, expertNames: ExpertNames);
        if (embedded is not null)
            for (int i = 0; i < embedded.Length; i++) embedded[i].WriteTo(Path.Combine(dir, "experts", ExpertNames[i]));
        return dir;
    }

    static async Task<(Completion Completion, long RoutedTokens)> CompleteAsync(AdapterServer server, GreedyRequest request)
    {
        var (status, body) = await server.PostAsync("/v1/completions", request.Json());
        Assert.True(status == 200, $"{request.Json()} → {status} {body?.ToJsonString()}");
        var usage = body!["usage"]!;
        // Every position that ran through the model: the prompt and each fed-back token (not the last one).
        return (Completion.FromResponse(body), (long)usage["prompt_tokens"]! + (long)usage["completion_tokens"]! - 1);
    }

    /// <summary>
    /// Same tokens; logprobs within the HTTP tests' batching round-off (5e-4: the JSON carries float32, and batch shapes
    /// change the GEMM kernels and their summation order; adapter GEMMs run on one MKL thread, whose kernels differ
    /// more between one row and several, and two or more mixers in a step share the slot path's batched GEMMs while a
    /// mixer alone runs its own: 1.4e-4 and 3.1e-4 seen on a mixer, at a logprob of −3.6).
    /// </summary>
    static void AssertClose(Completion expected, Completion actual, string what, double tolerance = 5e-4)
    {
        Assert.True(expected.Tokens.SequenceEqual(actual.Tokens), $"{what}: tokens differ\n expected: {string.Join('|', expected.Tokens)}\n   actual: {string.Join('|', actual.Tokens)}");
        for (int i = 0; i < expected.Logprobs.Count; i++)
            Assert.True(Math.Abs(expected.Logprobs[i] - actual.Logprobs[i]) <= tolerance, $"{what}: logprob {i}: {expected.Logprobs[i]} vs {actual.Logprobs[i]}");
    }

    static double Entropy(IReadOnlyList<long> counts)
    {
        double total = counts.Sum(), h = 0;
        foreach (var n in counts) if (n > 0) h -= n / total * Math.Log(n / total);
        return h / Math.Log(counts.Count);
    }

    [Fact]
    public async Task A_mixer_over_uploaded_loras_serves_like_the_same_mixer_with_embedded_experts_and_counts_and_protects_its_experts()
    {
        await using var server = await AdapterServer.StartAsync();
        using var tmp = new TempDir();
        var experts = ExpertNames.Select((_, i) => TinyAdapters.Lora(seed: 700 + i)).ToArray();
        for (int i = 0; i < experts.Length; i++) await server.UploadOkAsync(ExpertNames[i], experts[i]);

        // Referenced experts: loose adapter_config.json + mixer_model.safetensors.
        var (status, body) = await UploadFilesAsync(server, Mix, FilesOf(WriteMixer(tmp, "referenced", embedded: null)));
        Assert.True(status == 201, $"{status} {body?.ToJsonString()}");
        Assert.Equal("lora_mixer", (string?)body!["kind"]);
        Assert.Equal(ExpertNames, body["experts"]!.AsArray().Select(e => (string)e!));
        Assert.Equal(2, (int)body["top_k"]!);
        Assert.Equal(ExpertNames, body["depends_on"]!.AsArray().Select(e => (string)e!));
        // Embedded experts: one archive with experts/<name>/ folders.
        byte[] zip = TestArchives.Zip(FilesOf(WriteMixer(tmp, "embedded", experts)).Select(f => ("mixer/" + f.Name, f.Bytes)));
        (status, body) = await UploadFilesAsync(server, "mix-embedded", [("file", zip)]);
        Assert.True(status == 201, $"{status} {body?.ToJsonString()}");
        Assert.Null(body!["depends_on"]);

        var (_, list) = await server.GetAsync("/v1/adapters");
        var listed = list!["data"]!.AsArray().Single(a => (string?)a!["id"] == Mix)!;
        Assert.Equal("lora_mixer", (string?)listed["kind"]);
        Assert.Equal(ExpertNames, listed["experts"]!.AsArray().Select(e => (string)e!));
        Assert.Equal(2, (int)listed["top_k"]!);
        Assert.Equal("stored", (string?)listed["status"]);                                 // nothing loaded before the first request
        long embeddedBytes = (long)list["data"]!.AsArray().Single(a => (string?)a!["id"] == "mix-embedded")!["bytes"]!;
        Assert.True((long)listed["bytes"]! > 0 && embeddedBytes > (long)listed["bytes"]!, "the embedded mixer's bytes include its experts");

        // Alone, then all at once in one batch (mixers, a plain LoRA, the base): each sequence gets what it gets alone.
        GreedyRequest[] requests =
        [
            new(Mix, "Once upon a time", 8), new("mix-embedded", "Once upon a time", 8), new(ExpertNames[0], "The cat", 8),
            new(AdapterServer.Base, "Hello there", 8), new(Mix, "A dog ran", 6),
        ];
        var alone = new List<(Completion Completion, long Routed)>();
        foreach (var r in requests) alone.Add(await CompleteAsync(server, r));
        var together = await Task.WhenAll(requests.Select(r => CompleteAsync(server, r)));
        for (int i = 0; i < requests.Length; i++) AssertClose(alone[i].Completion, together[i].Completion, $"request {i} ({requests[i].Model}) in the batch");
        // One expert weights, two routes in: registered and embedded experts serve the same mixture.
        AssertClose(alone[0].Completion, alone[1].Completion, "mixer with registered vs embedded experts");
        var baseStory = await server.CompleteAsync(new GreedyRequest(AdapterServer.Base, "Once upon a time", 8));
        Assert.NotEqual(baseStory.Logprobs, alone[0].Completion.Logprobs);
        (_, listed) = await server.GetAsync($"/v1/adapters/{Mix}");
        Assert.Equal("device", (string?)listed!["status"]);                                // loaded just in time

        // The experts endpoint: every routed position counted once per module, top-2 selections each.
        long routed = Enumerable.Range(0, requests.Length).Where(i => requests[i].Model == Mix).Sum(i => alone[i].Routed + together[i].RoutedTokens);
        var (expertsStatus, usage) = await server.GetAsync($"/v1/adapters/{Mix}/experts");
        Assert.Equal(200, expertsStatus);
        Assert.Equal(ExpertNames, usage!["experts"]!.AsArray().Select(e => (string)e!));
        var modules = usage["modules"]!.AsArray();
        Assert.Equal(TinyModel.Config.NumHiddenLayers * ProjectionNames.All.Count(), modules.Count);
        var metrics = await server.MetricsAsync();
        foreach (var m in modules)
        {
            Assert.Equal(routed, (long)m!["routed_tokens"]!);
            var counts = m["experts"]!.AsArray().Select(e => (long)e!["selections"]!).ToList();
            Assert.Equal(2 * routed, counts.Sum());
            Assert.Equal(1.0, m["experts"]!.AsArray().Sum(e => (double)e!["share"]!), 9);
            Assert.Equal(Entropy(counts), (double)m["load_balance"]!, 9);
            // Fewer steps ran than the window (64): the gauge covers them all.
            string series = $"adapterserve_expert_load_balance{{adapter=\"{Mix}\",layer=\"{m["layer"]}\",module=\"{m["module"]}\"}}";
            Assert.Equal(Entropy(counts), metrics.Value(series), 9);
            for (int e = 0; e < counts.Count; e++)
                Assert.Equal(counts[e], metrics.Value($"adapterserve_expert_selections_total{{adapter=\"{Mix}\",layer=\"{m["layer"]}\",module=\"{m["module"]}\",expert=\"{ExpertNames[e]}\"}}"));
        }
        PromtoolAccepts(metrics.Text);

        var (loraExperts, notMixture) = await server.GetAsync($"/v1/adapters/{ExpertNames[0]}/experts");
        Assert.Equal(400, loraExperts);
        Assert.Equal("not_a_mixture", (string?)Http.Error(notMixture)["code"]);

        // An expert in use by a mixer is not deleted or unloaded: 409 naming the mixer; the mixer goes first.
        var (deleteStatus, refused) = await server.DeleteAsync(ExpertNames[1]);
        Assert.Equal(409, deleteStatus);
        Assert.Equal("adapter_referenced", (string?)Http.Error(refused)["code"]);
        Assert.Contains($"'{Mix}'", (string?)Http.Error(refused)["message"]);
        var (unloadStatus, unloadText) = await UnloadAsync(server, ExpertNames[1]);
        Assert.True(unloadStatus == 409, unloadText);
        Assert.Contains($"'{Mix}'", (string?)Http.Error(JsonNode.Parse(unloadText))["message"]);
        Assert.Equal(200, (await server.GetAsync($"/v1/adapters/{ExpertNames[1]}")).Status);
        Assert.Equal(200, (await server.DeleteAsync(Mix)).Status);
        Assert.Equal(200, (await server.DeleteAsync(ExpertNames[1])).Status);
    }

    [Fact]
    public async Task Path_registration_just_in_time_and_an_expert_replacement_reach_new_requests_of_the_mixer()
    {
        await using var server = await AdapterServer.StartAsync();
        using var tmp = new TempDir();
        var experts = ExpertNames.Select((_, i) => TinyAdapters.Lora(seed: 800 + i)).ToArray();
        for (int i = 0; i < experts.Length; i++) await server.UploadOkAsync(ExpertNames[i], experts[i]);
        var (status, text) = await server.LoadLoraAdapterAsync("mix", WriteMixer(tmp, "referenced", embedded: null, seed: 41), inplace: false);
        Assert.True(status == 200, text);
        var replacement = TinyAdapters.Lora(seed: 900);
        var swapped = experts.ToArray();
        swapped[0] = replacement;
        (status, text) = await server.LoadLoraAdapterAsync("mix-old", WriteMixer(tmp, "embedded-old", experts, seed: 41), inplace: false);
        Assert.True(status == 200, text);
        (status, text) = await server.LoadLoraAdapterAsync("mix-new", WriteMixer(tmp, "embedded-new", swapped, seed: 41), inplace: false);
        Assert.True(status == 200, text);

        var story = new GreedyRequest("mix", "Once upon a time", 8);
        var before = (await CompleteAsync(server, story)).Completion;
        AssertClose((await CompleteAsync(server, story with { Model = "mix-old" })).Completion, before, "path-registered mixer vs embedded copy");

        await server.UploadOkAsync(ExpertNames[0], replacement, replace: true);
        var after = (await CompleteAsync(server, story)).Completion;
        AssertClose((await CompleteAsync(server, story with { Model = "mix-new" })).Completion, after, "mixer after its expert was replaced vs embedded new expert");
        Assert.NotEqual(before.Logprobs, after.Logprobs);
        var (_, info) = await server.GetAsync("/v1/adapters/mix");
        Assert.Equal(1, (int)info!["version"]!);                                            // the mixer itself did not change

        // Replacing the mixer itself (other routers, load_inplace): new requests get version 2.
        (status, text) = await server.LoadLoraAdapterAsync("mix", WriteMixer(tmp, "rerouted", embedded: null, seed: 43), inplace: true);
        Assert.True(status == 200, text);
        (status, text) = await server.LoadLoraAdapterAsync("mix-rerouted", WriteMixer(tmp, "embedded-rerouted", swapped, seed: 43), inplace: false);
        Assert.True(status == 200, text);
        var rerouted = (await CompleteAsync(server, story)).Completion;
        AssertClose((await CompleteAsync(server, story with { Model = "mix-rerouted" })).Completion, rerouted, "replaced mixer vs embedded copy");
        Assert.NotEqual(after.Logprobs, rerouted.Logprobs);
        (_, info) = await server.GetAsync("/v1/adapters/mix");
        Assert.Equal(2, (int)info!["version"]!);
    }

    [Fact]
    public async Task An_omoe_upload_is_served_and_counted_densely_and_bad_mixtures_are_refused_with_nothing_stored()
    {
        await using var server = await AdapterServer.StartAsync();
        using var tmp = new TempDir();
        string omoe = tmp.Sub("omoe");
        MixtureWriters.WriteOmoe(omoe, TinyModel.Config, experts: 4, rank: 4, [Projection.Q, Projection.V, Projection.Down], seed: 5);
        var (status, body) = await UploadFilesAsync(server, "omoe", FilesOf(omoe));
        Assert.True(status == 201, $"{status} {body?.ToJsonString()}");
        Assert.Equal("omoe", (string?)body!["kind"]);
        Assert.Equal(["0", "1", "2", "3"], body["experts"]!.AsArray().Select(e => (string)e!));
        Assert.Equal(4, (int)body["top_k"]!);

        var (completion, routed) = await CompleteAsync(server, new GreedyRequest("omoe", "Once upon a time", 6));
        var baseStory = await server.CompleteAsync(new GreedyRequest(AdapterServer.Base, "Once upon a time", 6));
        Assert.NotEqual(baseStory.Logprobs, completion.Logprobs);
        var (_, usage) = await server.GetAsync("/v1/adapters/omoe/experts");
        var modules = usage!["modules"]!.AsArray();
        Assert.Equal(TinyModel.Config.NumHiddenLayers * 3, modules.Count);
        Assert.All(modules, m =>
        {
            Assert.Equal(routed, (long)m!["routed_tokens"]!);
            Assert.All(m["experts"]!.AsArray(), e => Assert.Equal(routed, (long)e!["selections"]!));   // dense: every expert, every token
            Assert.Equal(1.0, (double)m["load_balance"]!, 12);
        });

        // A mixer naming an expert nobody registered: 400 naming it; nothing stored.
        (status, body) = await UploadFilesAsync(server, "orphan", FilesOf(WriteMixer(tmp, "orphan", embedded: null)));
        Assert.Equal(400, status);
        Assert.Contains("e-zara", (string?)Http.Error(body)["message"]);
        Assert.Equal(404, (await server.GetAsync("/v1/adapters/orphan")).Status);
        // top_k larger than the experts: 400 naming top_k.
        for (int i = 0; i < ExpertNames.Length; i++) await server.UploadOkAsync(ExpertNames[i], TinyAdapters.Lora(seed: 600 + i));
        string wide = WriteMixer(tmp, "wide", embedded: null);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(wide, "adapter_config.json")))!;
        config["top_k"] = 4;
        File.WriteAllText(Path.Combine(wide, "adapter_config.json"), config.ToJsonString());
        (status, body) = await UploadFilesAsync(server, "wide", FilesOf(wide));
        Assert.Equal(400, status);
        Assert.Contains("top_k", (string?)Http.Error(body)["message"]);
        Assert.Equal(404, (await server.GetAsync("/v1/adapters/wide")).Status);
        Assert.Equal(ExpertNames.Length + 1, (await server.GetAsync("/v1/adapters")).Body!["data"]!.AsArray().Count);
    }

    /// <summary>
    /// stories260K with the real LoRAs zara and forest as the experts of a mixer, registered by path, through HTTP. The
    /// routers are written so the answer is known without the engine: a zero router with top_k 2 weighs both experts
    /// ½ (the same as the request-time linear mix ½·zara + ½·forest), and a bias of +8/−8 with top_k 1 is zara alone.
    /// </summary>
    [Fact]
    public async Task Real_model_mixer_over_zara_and_forest_equals_their_linear_mix_and_zara_alone_when_routed_so()
    {
        string model = SharedModels.Require("stories260K-hf");
        var config = ModelConfig.Load(Path.Combine(model, "config.json"));
        config = config with { HeadDim = config.HeadDim > 0 ? config.HeadDim : config.HiddenSize / config.NumAttentionHeads };
        await using var server = await AdapterServer.StartAsync(new Dictionary<string, string?> { ["Engine:ModelPath"] = model });
        using var tmp = new TempDir();
        foreach (var name in new[] { "zara", "forest" })
        {
            var (s, t) = await server.LoadLoraAdapterAsync(name, SharedModels.Require("adapters/" + name), inplace: false);
            Assert.True(s == 200, t);
        }

        string WriteRouted(string name, int topK, float zaraBias)
        {
            string dir = tmp.Sub(name);
            Directory.CreateDirectory(dir);
            var cfg = new JsonObject { ["peft_type"] = "LORA_MIXER", ["experts"] = new JsonArray("zara", "forest"), ["top_k"] = topK, ["renormalize"] = true };
            File.WriteAllText(Path.Combine(dir, "adapter_config.json"), cfg.ToJsonString());
            using var scope = NewDisposeScope();
            var tensors = new List<KeyValuePair<string, Tensor>>();
            for (int layer = 0; layer < config.NumHiddenLayers; layer++)
                foreach (var p in ProjectionNames.All)
                {
                    string prefix = "base_model.model." + ProjectionNames.ModulePath(layer, p);
                    var (inFeatures, _) = config.ProjectionShape(p);
                    tensors.Add(new($"{prefix}.router.weight", zeros(2, inFeatures)));                              // [E, d_in]
                    tensors.Add(new($"{prefix}.router.bias", tensor(new[] { zaraBias, -zaraBias })));                // [E]
                }
            SafetensorsWriter.Write(Path.Combine(dir, "mixer_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            return dir;
        }
        foreach (var (name, dir) in new[] { ("half", WriteRouted("half", 2, 0f)), ("to-zara", WriteRouted("to-zara", 1, 8f)) })
        {
            var (s, t) = await server.LoadLoraAdapterAsync(name, dir, inplace: false);
            Assert.True(s == 200, t);
        }

        var story = new GreedyRequest("half", "Once upon a time", 32);
        var results = await Task.WhenAll(
            CompleteAsync(server, story),
            CompleteAsync(server, story with { Model = AdapterServer.Base, Adapters = """[{"name":"zara","scale":0.5},{"name":"forest","scale":0.5}]""" }),
            CompleteAsync(server, story with { Model = "to-zara" }),
            CompleteAsync(server, story with { Model = "zara" }));
        TestContext.Current.SendDiagnosticMessage($"half: {results[0].Completion.Text}\nto-zara: {results[2].Completion.Text}");
        AssertClose(results[1].Completion, results[0].Completion, "mixer with uniform routing vs ½·zara + ½·forest", 1e-4);
        AssertClose(results[3].Completion, results[2].Completion, "mixer routed to zara vs zara", 1e-4);
        Assert.Contains("Zara", results[2].Completion.Text);

        var (_, usage) = await server.GetAsync("/v1/adapters/to-zara/experts");
        Assert.All(usage!["modules"]!.AsArray(), m =>
        {
            Assert.Equal(results[2].RoutedTokens, (long)m!["experts"]![0]!["selections"]!);
            Assert.Equal(0, (long)m["experts"]![1]!["selections"]!);
            Assert.Equal(0.0, (double)m["load_balance"]!, 12);
        });
    }

    static async Task<(int Status, string Text)> UnloadAsync(AdapterServer server, string name)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/unload_lora_adapter")
        {
            Content = new StringContent(new JsonObject { ["lora_name"] = name }.ToJsonString(), System.Text.Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdapterServer.AdminKey);
        using var response = await server.Client.SendAsync(request, TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }

    /// <summary><c>promtool check metrics</c> on the /metrics text (skipped when promtool is not installed).</summary>
    static void PromtoolAccepts(string text)
    {
        string? promtool = Environment.GetEnvironmentVariable("PATH")?.Split(':').Select(d => Path.Combine(d, "promtool")).FirstOrDefault(File.Exists);
        if (promtool is null) { TestContext.Current.SendDiagnosticMessage("promtool not installed: /metrics lint skipped"); return; }
        var start = new ProcessStartInfo(promtool, "check metrics") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = Process.Start(start)!;
        process.StandardInput.Write(text);
        process.StandardInput.Close();
        string output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, "promtool check metrics: " + output);
    }

    /// <summary>POST /v1/mixers with text fields and, unless null, the router file.</summary>
    static async Task<(int Status, JsonNode? Body)> CreateMixerAsync(AdapterServer server, IEnumerable<(string Field, string Value)> fields, byte[]? routers,
        bool replace = false, bool admin = true)
    {
        var form = new MultipartFormDataContent();
        foreach (var (field, value) in fields) form.Add(new StringContent(value), field);
        if (routers is not null) form.Add(new ByteArrayContent(routers), "mixer_model.safetensors", "mixer_model.safetensors");
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/mixers" + (replace ? "?replace=true" : "")) { Content = form };
        if (admin) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdapterServer.AdminKey);
        using var response = await server.Client.SendAsync(request, TestContext.Current.CancellationToken);
        string text = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, text.Length > 0 ? JsonNode.Parse(text) : null);
    }

    [Fact]
    public async Task A_mixer_created_from_registered_loras_and_a_router_file_serves_like_the_same_mixer_uploaded_as_a_folder()
    {
        await using var server = await AdapterServer.StartAsync();
        using var tmp = new TempDir();
        for (int i = 0; i < ExpertNames.Length; i++) await server.UploadOkAsync(ExpertNames[i], TinyAdapters.Lora(seed: 900 + i));
        string folder = WriteMixer(tmp, "folder", embedded: null);
        var (status, body) = await UploadFilesAsync(server, "mix-folder", FilesOf(folder));
        Assert.True(status == 201, $"{status} {body?.ToJsonString()}");
        byte[] routers = File.ReadAllBytes(Path.Combine(folder, "mixer_model.safetensors"));
        string targets = string.Join(",", ProjectionNames.All.Select(p => p.ShortName()));
        (string, string)[] fields = [("name", "mix-form"), ("experts", JsonSerializer.Serialize(ExpertNames)), ("top_k", "2"), ("target_modules", targets)];

        (status, body) = await CreateMixerAsync(server, fields, routers);
        Assert.True(status == 201, $"{status} {body?.ToJsonString()}");
        Assert.Equal("lora_mixer", (string?)body!["kind"]);
        Assert.Equal(ExpertNames, body["experts"]!.AsArray().Select(e => (string)e!));
        Assert.Equal(ExpertNames, body["depends_on"]!.AsArray().Select(e => (string)e!));
        Assert.Equal(2, (int)body["top_k"]!);
        Assert.Equal(1, (int)body["version"]!);

        var fromFolder = (await CompleteAsync(server, new GreedyRequest("mix-folder", "Once upon a time", 8))).Completion;
        var fromForm = (await CompleteAsync(server, new GreedyRequest("mix-form", "Once upon a time", 8))).Completion;
        var baseStory = await server.CompleteAsync(new GreedyRequest(AdapterServer.Base, "Once upon a time", 8));
        Assert.NotEqual(baseStory.Logprobs, fromForm.Logprobs);
        AssertClose(fromFolder, fromForm, "mixer from /v1/mixers vs the same mixer uploaded as a folder", tolerance: 1e-6);

        // Referenced like any mixer: its experts cannot be deleted.
        var (deleteStatus, deleteBody) = await server.DeleteAsync(ExpertNames[0]);
        Assert.Equal(409, deleteStatus);
        Assert.Contains("mix-form", deleteBody!.ToJsonString());

        // Refusals name the field; nothing is stored.
        async Task Refused(int expectedStatus, string? param, IEnumerable<(string, string)> form, byte[]? file, bool admin = true)
        {
            var (s, b) = await CreateMixerAsync(server, form, file, admin: admin);
            Assert.True(s == expectedStatus, $"{s} {b?.ToJsonString()}");
            if (param is not null) Assert.Equal(param, (string?)b!["error"]!["param"]);
        }
        (string, string)[] named = [("name", "mix-bad")];
        await Refused(400, "experts", [.. named, ("top_k", "2")], routers);
        await Refused(400, "top_k", [.. named, ("experts", "e-zara,e-forest,e-sea"), ("top_k", "two")], routers);
        await Refused(400, "renormalize", [.. named, ("experts", "e-zara,e-forest,e-sea"), ("renormalize", "maybe")], routers);
        await Refused(400, "mixer_model.safetensors", [.. named, ("experts", "e-zara,e-forest,e-sea")], null);
        await Refused(400, "name", [("experts", "e-zara")], routers);
        await Refused(400, null, [.. named, ("experts", "e-zara,e-forest,e-nobody"), ("top_k", "2")], routers);
        await Refused(400, null, [.. named, ("experts", "e-zara,e-forest"), ("top_k", "2")], routers);   // 3 routers, 2 experts
        await Refused(401, null, fields, routers, admin: false);
        await Refused(409, null, fields, routers);                                                        // the name exists
        var (_, list) = await server.GetAsync("/v1/adapters");
        Assert.DoesNotContain(list!["data"]!.AsArray(), a => (string?)a!["id"] == "mix-bad");

        // ?replace=true: a new version with other routers, served to new requests.
        string other = WriteMixer(tmp, "other", embedded: null, seed: 77);
        (status, body) = await CreateMixerAsync(server, fields, File.ReadAllBytes(Path.Combine(other, "mixer_model.safetensors")), replace: true);
        Assert.True(status == 200, $"{status} {body?.ToJsonString()}");
        Assert.Equal(2, (int)body!["version"]!);
        var replaced = (await CompleteAsync(server, new GreedyRequest("mix-form", "Once upon a time", 8))).Completion;
        Assert.NotEqual(fromForm.Logprobs, replaced.Logprobs);
    }
}
