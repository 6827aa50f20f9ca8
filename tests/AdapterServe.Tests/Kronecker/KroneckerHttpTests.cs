using System.Text.Json.Nodes;
using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterHttp;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Server;

namespace AdapterServe.Tests.Kronecker;

/// <summary>LoKr and MoKA through the whole server: upload, registration by path, listing, mixed streamed batches, refusals.</summary>
[Collection(AdapterHttpCollection.Name)]
public sealed class KroneckerHttpTests(ReferenceServer reference)
{
    private static readonly ModelConfig Model = TinyModel.Config;   // hidden 64, k/v 32, intermediate 128

    public static TestAdapter Lokr(int seed, FactorForm w2 = FactorForm.LowRank) =>
        KroneckerTestFiles.Lokr(Model, ProjectionNames.All, r: 2, alpha: 4, w2: w2, seed: seed);

    public static TestAdapter Moka(int seed) => KroneckerServingTests.Moka(seed, Model);

    private static GreedyRequest Story(string model) => new(model, "Once upon a time", 12);

    [Fact]
    public async Task Streamed_batch_of_the_base_lokr_moka_and_lora_gives_every_request_its_output_alone()
    {
        var adapters = new Dictionary<string, TestAdapter>
        {
            ["kron-lokr"] = Lokr(801),
            ["kron-moka"] = Moka(802),
            ["kron-lora"] = TinyAdapters.Lora(seed: 803),
        };
        string?[] models = [null, "kron-lokr", "kron-moka", "kron-lora", "kron-lokr", null, "kron-moka"];
        string[] prompts = ["Once upon a time", "The cat sat", "In the forest", "A dog", "Hello there", "One day", "The sun was"];
        GreedyRequest Request(int i) => new(models[i] ?? AdapterServer.Base, prompts[i], 16);

        var alone = new List<Completion>();
        for (int i = 0; i < models.Length; i++)
            alone.Add(await reference.AloneAsync(models[i], models[i] is { } m ? adapters[m] : null, Request(i)));
        foreach (int i in new[] { 1, 2 })     // LoKr and MoKA change the output of their prompts
            Assert.NotEqual((await reference.AloneAsync(null, null, Request(i) with { Model = AdapterServer.Base })).Logprobs, alone[i].Logprobs);

        await using var server = await AdapterServer.StartAsync();
        foreach (var (name, adapter) in adapters) await server.UploadOkAsync(name, adapter);
        foreach (var name in adapters.Keys) await server.CompleteAsync(new GreedyRequest(name, "x", 1));

        var together = await Task.WhenAll(Enumerable.Range(0, models.Length).Select(i => server.StreamAsync(Request(i))));
        for (int i = 0; i < models.Length; i++)
            together[i].AssertSameAs(alone[i], $"request {i} on {models[i] ?? "the base"}");
    }

    [Fact]
    public async Task Lokr_registers_by_path_and_moka_just_in_time_with_the_adapters_extension()
    {
        var lokr = Lokr(811, FactorForm.Whole);
        var moka = Moka(812);
        var expectedLokr = await reference.AloneAsync("path-lokr", lokr, Story("path-lokr"));
        var expectedMoka = await reference.AloneAsync("jit-moka", moka, Story("jit-moka"));

        await using var server = await AdapterServer.StartAsync();
        using var folders = new TempDir();
        var (status, text) = await server.LoadLoraAdapterAsync("by-path", lokr.WriteTo(folders.Sub("lokr")), inplace: false);
        Assert.True(status == 200, $"load_lora_adapter: {status} {text}");
        (await server.CompleteAsync(Story("by-path"))).AssertSameAs(expectedLokr, "LoKr registered by path");

        await server.UploadOkAsync("jit", moka);
        var viaExtension = await server.CompleteAsync(Story(AdapterServer.Base) with { Adapters = """[{"name": "jit", "scale": 1.0}]""" });
        viaExtension.AssertSameAs(expectedMoka, "MoKA through the adapters extension");
    }

    [Fact]
    public async Task Adapters_api_shows_kind_and_factor_shapes_and_resident_bytes_count_the_served_factors()
    {
        var lokr = Lokr(831);                       // r 2: w2 stored low-rank (2 < max(out_k, in_n) / 2)
        var moka = Moka(832);
        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("api-lokr", lokr);
        await server.UploadOkAsync("api-moka", moka);

        var (status, info) = await server.GetAsync("/v1/adapters/api-lokr");
        Assert.Equal(200, status);
        Assert.Equal("lokr", (string?)info!["kind"]);
        Assert.Equal(2, (int?)info["rank"]);
        var gate = info["modules"]!.AsArray().First(m => (string?)m!["module"] == "gate_proj")!;
        Assert.Equal("[8, 8]", (string?)gate["w1"]);       // gate [128, 64]: 128 = 8·16, 64 = 8·8
        Assert.Equal("[16, 8]", (string?)gate["w2"]);
        Assert.Equal(2, (int?)gate["w2_rank"]);
        Assert.Equal(2.0, (double?)gate["scaling"]);

        (status, info) = await server.GetAsync("/v1/adapters/api-moka");
        Assert.Equal("moka", (string?)info!["kind"]);
        var q = info["modules"]!.AsArray().First(m => (string?)m!["module"] == "q_proj")!;
        Assert.Equal("[[8, 8, 8, 8], [8, 8, 8, 8], [8, 8, 8, 8], [64, 1, 1, 64]]", (string?)q["components"]);
        Assert.Equal(4, (int?)q["component_count"]);

        // Resident bytes: float32 factors as served (low-rank w2 multiplied out; MoKA's gate folded away).
        long Served(TestAdapter adapter) => 4 * adapter.Tensors.Sum(t => t.Name switch
        {
            var n when n.EndsWith("_gate", StringComparison.Ordinal) || n.EndsWith("_a", StringComparison.Ordinal) => 0,
            var n when n.EndsWith("_b", StringComparison.Ordinal) => adapter.Tensors.Single(a => a.Name == n[..^1] + "a").Shape[0] * t.Shape[1],
            _ => t.Shape[0] * t.Shape[1],
        });
        foreach (var (name, adapter) in new[] { ("api-lokr", lokr), ("api-moka", moka) })
        {
            await server.CompleteAsync(new GreedyRequest(name, "x", 1));
            (_, info) = await server.GetAsync($"/v1/adapters/{name}");
            Assert.Equal("device", (string?)info!["status"]);
            Assert.Equal(Served(adapter), (long?)info["resident_bytes"]);
        }
    }

    [Fact]
    public async Task Replacing_a_lokr_with_a_moka_under_one_name_serves_the_moka_to_new_requests()
    {
        var lokr = Lokr(841);
        var moka = Moka(842);
        var expectedLokr = await reference.AloneAsync("swap-lokr", lokr, Story("swap-lokr"));
        var expectedMoka = await reference.AloneAsync("swap-moka", moka, Story("swap-moka"));
        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("swap", lokr);
        (await server.CompleteAsync(Story("swap"))).AssertSameAs(expectedLokr, "before the swap");
        await server.UploadOkAsync("swap", moka, replace: true);
        (await server.CompleteAsync(Story("swap"))).AssertSameAs(expectedMoka, "after the swap");
    }

    public static TheoryData<string> BadFiles() => new(["products", "missing", "gate", "nan", "inf", "conv2d", "tucker"]);

    [Theory]
    [MemberData(nameof(BadFiles))]
    public async Task A_bad_kronecker_upload_is_a_400_naming_the_tensor_or_field_and_nothing_stored_changes(string problem)
    {
        string q0 = KroneckerTestFiles.Prefix(0, Projection.Q), up1 = KroneckerTestFiles.Prefix(1, Projection.Up);
        var (adapter, named) = problem switch
        {
            "products" => (Lokr(821).Replace(q0 + ".lokr_w1", t => t with { Shape = [4, 8], Values = new float[32] }), q0 + ".lokr_w1"),
            "missing" => (Lokr(822).Remove(up1 + ".lokr_w2_a"), up1 + ".lokr_w2_a"),
            "gate" => (Moka(823).Replace(up1 + ".moka_gate", t => t with { Shape = [5], Values = new float[5] }), up1 + ".moka_gate"),
            "nan" => (Lokr(824).Replace(up1 + ".lokr_w2_b", t => t with { Values = t.Values.Select((v, i) => i == 3 ? float.NaN : v).ToArray() }), up1 + ".lokr_w2_b"),
            "inf" => (Moka(825).Replace(q0 + ".moka_A.1", t => t with { Values = t.Values.Select((v, i) => i == 0 ? float.NegativeInfinity : v).ToArray() }), q0 + ".moka_A.1"),
            "conv2d" => (WithConfig(Lokr(826), "use_effective_conv2d", true), "use_effective_conv2d"),
            _ => (Lokr(827).Add(q0 + ".lokr_t2", [2, 2, 1, 1], new Random(1)), q0 + ".lokr_t2"),
        };
        await using var server = await AdapterServer.StartAsync();
        await server.UploadOkAsync("kept", Lokr(828));
        string before = TreeListing.Of(server.DataDirectory);

        var (status, body) = await server.UploadAsync("bad", adapter);
        Assert.Equal(400, status);
        var error = Http.Error(body);
        Assert.Contains(named, (string?)error["message"]);
        Assert.Equal(before, TreeListing.Of(server.DataDirectory));
        var (replaceStatus, _) = await server.UploadAsync("kept", adapter, replace: true);
        Assert.Equal(400, replaceStatus);
        Assert.Equal(before, TreeListing.Of(server.DataDirectory));
        await server.CompleteAsync(Story("kept"));
    }

    private static TestAdapter WithConfig(TestAdapter adapter, string field, JsonNode value)
    {
        adapter.Config[field] = value;
        return adapter;
    }
}
