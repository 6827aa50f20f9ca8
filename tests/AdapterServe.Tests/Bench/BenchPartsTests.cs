using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Bench;
using AdapterServe.Bench.Adapters;
using AdapterServe.Bench.Http;
using AdapterServe.Bench.Models;
using AdapterServe.Bench.Reporting;
using AdapterServe.Modeling;
using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.Bench;

public sealed class BenchPartsTests
{
    [Fact]
    public void Percentiles_interpolate_between_closest_ranks_like_numpy()
    {
        double[] xs = [10, 1, 9, 2, 8, 3, 7, 4, 6, 5];
        // numpy.percentile(range(1, 11), [50, 95, 99]) == [5.5, 9.55, 9.91]
        Assert.Equal(5.5, Stats.Percentile(xs, 50), 12);
        Assert.Equal(9.55, Stats.Percentile(xs, 95), 12);
        Assert.Equal(9.91, Stats.Percentile(xs, 99), 12);
        Assert.Equal(2, Stats.Median([3.0, 1, 2]));
        Assert.Throws<ArgumentException>(() => Stats.Median([]));
    }

    [Theory]
    [InlineData("http://127.0.0.1:8000")]
    [InlineData("http://127.9.8.7:1/")]
    [InlineData("http://localhost:5000")]
    [InlineData("https://LOCALHOST")]
    [InlineData("http://[::1]:8000")]
    public void Loopback_urls_are_accepted(string url) => Assert.Equal(url.ToLowerInvariant().TrimEnd('/'), LoopbackUrl.Parse(url).ToString().ToLowerInvariant().TrimEnd('/'));

    [Theory]
    [InlineData("http://10.0.0.1:8000", "not loopback")]
    [InlineData("http://0.0.0.0:8000", "not loopback")]
    [InlineData("http://example.com", "not loopback")]
    [InlineData("http://[::2]:80", "not loopback")]
    [InlineData("ftp://127.0.0.1/", "not an absolute http")]
    [InlineData("127.0.0.1:8000", "not an absolute http")]
    public void Other_urls_are_refused_with_the_reason(string url, string reason) =>
        Assert.Contains(reason, Assert.Throws<UsageException>(() => LoopbackUrl.Parse(url)).Message);

    [Theory]
    [InlineData("http://127.0.0.1:8000", "http://127.0.0.1:8000/")]
    [InlineData("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/")]
    [InlineData("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/")]
    [InlineData("http://localhost:9/proxy/v1", "http://localhost:9/proxy/")]
    public void Serve_accepts_the_server_root_or_its_v1_base_url(string given, string root) =>
        Assert.Equal(root, AdapterServe.Bench.Scenarios.ServeScenario.ServerRoot(new Uri(given)).ToString());

    [Fact]
    public void Zipf_choice_follows_one_over_rank_to_the_s()
    {
        string[] models = ["a", "b", "c", "d"];
        var chooser = ModelChooser.Parse("zipf:1.5", models, seed: 7);
        double h = Enumerable.Range(1, 4).Sum(k => 1 / Math.Pow(k, 1.5));
        var counts = models.ToDictionary(m => m, _ => 0);
        const int draws = 40_000;
        for (int i = 0; i < draws; i++) counts[chooser.Next()]++;
        for (int k = 1; k <= 4; k++)
            Assert.InRange(counts[models[k - 1]] / (double)draws, 1 / Math.Pow(k, 1.5) / h - 0.01, 1 / Math.Pow(k, 1.5) / h + 0.01);
    }

    [Fact]
    public void Uniform_choice_gives_every_model_the_same_share()
    {
        var chooser = ModelChooser.Parse("uniform", ["a", "b"], seed: 3);
        int a = Enumerable.Range(0, 20_000).Count(_ => chooser.Next() == "a");
        Assert.InRange(a / 20_000.0, 0.49, 0.51);
    }

    [Theory]
    [InlineData("zipf")]
    [InlineData("zipf:-1")]
    [InlineData("normal")]
    public void Unknown_distributions_are_refused(string distribution) =>
        Assert.Contains("--distribution", Assert.Throws<UsageException>(() => ModelChooser.Parse(distribution, ["a"], 0)).Message);

    [Fact]
    public void Named_sizes_have_the_parameter_counts_of_the_models_they_imitate()
    {
        Assert.Equal(134_515_008, ModelSizes.ParameterCount(ModelSizes.Smol135M));   // SmolLM2-135M on Hugging Face
        Assert.Equal(1_235_814_400, ModelSizes.ParameterCount(ModelSizes.Llama1B));   // Llama-3.2-1B on Hugging Face
        var (name, config) = ModelSizes.Resolve("stories260K");
        Assert.Equal("stories260K", name);
        Assert.Equal((64, 172, 5, 8, 4, 512), (config.HiddenSize, config.IntermediateSize, config.NumHiddenLayers, config.NumAttentionHeads, config.NumKeyValueHeads, config.VocabSize));
    }

    [Fact]
    public void Options_fill_scenario_defaults_and_quick_sizes()
    {
        var full = BenchOptions.Parse(["decode"]);
        Assert.Equal([1, 4, 16, 32], full.Batches);
        Assert.Equal(3, full.Repeats);
        Assert.Equal("135m", full.ModelConfig);
        var quick = BenchOptions.Parse(["soak", "--quick", "--generations=7", "--max-tokens", "5"]);
        Assert.Equal(7, quick.Generations);
        Assert.Equal(5, quick.MaxTokens);
        Assert.Equal(1, quick.Repeats);
        var serve = BenchOptions.Parse(["serve", "--url", "http://127.0.0.1:1", "--adapters", "a, b"]);
        Assert.Equal((32, 200, 128, 1), (serve.Concurrency, serve.Requests, serve.MaxTokens, serve.Repeats));
        Assert.Equal(["a", "b"], serve.Adapters);
        // load warms up with cold loads: twice the device cache unless told.
        Assert.Equal(64, BenchOptions.Parse(["load"]).Warmup);
        Assert.Equal(20, BenchOptions.Parse(["load", "--device-cache", "10"]).Warmup);
        Assert.Equal(0, BenchOptions.Parse(["load", "--warmup", "0"]).Warmup);
        Assert.Equal(0.7f, BenchOptions.Parse(["decode", "--temperature", "0.7"]).Temperature);
        Assert.Equal(0f, BenchOptions.Parse(["decode"]).Temperature);   // greedy unless told
    }

    [Theory]
    [InlineData(new[] { "warp" }, "unknown scenario 'warp'")]
    [InlineData(new[] { "decode", "--fast" }, "unknown option '--fast'")]
    [InlineData(new[] { "decode", "--batches", "1,x" }, "--batches")]
    [InlineData(new[] { "decode", "--repeats", "0" }, "--repeats")]
    [InlineData(new[] { "decode", "--temperature", "-1" }, "--temperature")]
    [InlineData(new[] { "serve" }, "--url")]
    public void Bad_command_lines_name_the_culprit(string[] args, string message) =>
        Assert.Contains(message, Assert.Throws<UsageException>(() => BenchOptions.Parse(args)).Message);

    [Fact]
    public void Adapter_case_table_has_unique_names_and_valid_comparisons()
    {
        var names = AdapterCases.Table.Select(c => c.Name).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        foreach (var c in AdapterCases.Table.Where(c => c.Distinct > 1))
        {
            var single = Assert.Single(AdapterCases.Table, s => s.Name == c.ComparedTo);
            Assert.Equal(1, single.Distinct);
            Assert.Equal((single.Kind, single.Rank), (c.Kind, c.Rank));
            Assert.Equal(single.AdapterName(0), c.AdapterName(0));   // the N-adapter case reuses the single adapter's files
        }
        Assert.Equal("lora-r16-all-3", AdapterCases.Table.Single(c => c.Name == "lora-r16-x4").AdapterName(3));
    }

    [Fact]
    public void Peft_lora_writer_writes_every_target_of_every_layer_with_hugging_face_names_and_shapes()
    {
        using var dir = new TempDir();
        var model = ModelSizes.Tiny;   // hidden 32, 4 heads x 8, 2 kv heads x 8, intermediate 64, 2 layers
        PeftLoraWriter.Write(dir.Path, model, rank: 4, [Projection.Q, Projection.K, Projection.Down], seed: 5);

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, "adapter_config.json")))!;
        Assert.Equal("LORA", config["peft_type"]!.GetValue<string>());
        Assert.Equal(4, config["r"]!.GetValue<int>());
        Assert.Equal(8.0, config["lora_alpha"]!.GetValue<double>());
        Assert.Equal(["q_proj", "k_proj", "down_proj"], config["target_modules"]!.AsArray().Select(t => t!.GetValue<string>()));

        var (header, data) = ReadSafetensors(Path.Combine(dir.Path, "adapter_model.safetensors"));
        var expected = new Dictionary<string, long[]>();
        for (int layer = 0; layer < 2; layer++)
        {
            string p = $"base_model.model.model.layers.{layer}.";
            expected[p + "self_attn.q_proj.lora_A.weight"] = [4, 32];
            expected[p + "self_attn.q_proj.lora_B.weight"] = [32, 4];
            expected[p + "self_attn.k_proj.lora_A.weight"] = [4, 32];
            expected[p + "self_attn.k_proj.lora_B.weight"] = [16, 4];
            expected[p + "mlp.down_proj.lora_A.weight"] = [4, 64];
            expected[p + "mlp.down_proj.lora_B.weight"] = [32, 4];
        }
        var tensors = header.Where(kv => kv.Key != "__metadata__").ToDictionary(kv => kv.Key, kv => kv.Value!.AsObject());
        Assert.Equal(expected.Keys.Order(), tensors.Keys.Order());
        foreach (var (name, shape) in expected)
        {
            var t = tensors[name];
            Assert.Equal("F32", t["dtype"]!.GetValue<string>());
            Assert.Equal(shape, t["shape"]!.AsArray().Select(x => x!.GetValue<long>()));
            var offsets = t["data_offsets"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
            var values = Floats(data, offsets[0], offsets[1]);
            Assert.Equal(shape[0] * shape[1], values.Length);
            Assert.Contains(values, v => v != 0);   // B is not PEFT's zero initialisation
            Assert.All(values, v => Assert.True(float.IsFinite(v)));
        }
    }

    [Fact]
    public void Synthetic_model_cache_writes_once_and_rewrites_when_the_seed_changes()
    {
        using var dir = new TempDir();
        string model = SyntheticModelCache.Ensure(dir.Path, "tiny", ModelSizes.Tiny, seed: 1);
        string weights = Path.Combine(model, "model.safetensors");
        var written = File.GetLastWriteTimeUtc(weights);
        byte[] first = File.ReadAllBytes(weights);
        Assert.Equal(model, SyntheticModelCache.Ensure(dir.Path, "tiny", ModelSizes.Tiny, seed: 1));
        Assert.Equal(written, File.GetLastWriteTimeUtc(weights));
        SyntheticModelCache.Ensure(dir.Path, "tiny", ModelSizes.Tiny, seed: 2);
        Assert.NotEqual(first, File.ReadAllBytes(weights));
        Assert.True(File.Exists(Path.Combine(model, "config.json")));
        Assert.True(File.Exists(Path.Combine(model, "tokenizer.json")));
    }

    [Fact]
    public void Synthetic_model_cache_refuses_a_folder_it_did_not_write()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(dir.Sub("tiny"));
        File.WriteAllText(Path.Combine(dir.Sub("tiny"), "precious.txt"), "keep me");
        var e = Assert.Throws<BenchException>(() => SyntheticModelCache.Ensure(dir.Path, "tiny", ModelSizes.Tiny, seed: 1));
        Assert.Contains("was not written by the benchmark", e.Message);
        Assert.True(File.Exists(Path.Combine(dir.Sub("tiny"), "precious.txt")));
    }

    [Fact]
    public void Report_table_shows_every_figure_ratio_and_missed_target()
    {
        var report = new BenchReport { Scenario = "decode", Machine = new MachineInfo(2, "os", "cpu", ".NET", "0.107.0", "float32", "cpu", 2, "0.1 0.2 0.3", new Dictionary<string, string>()) };
        var b1 = report.Add(Figure.Of("decode.b1.tokens_per_s", "tokens/s", [10, 30, 20]));
        var b16 = report.Add(Figure.Of("decode.b16.tokens_per_s", "tokens/s", [60, 60, 60]));
        report.Add(Ratio.Between("decode.b16/b1", b16, b1, new Target(AtLeast: 4)));
        Assert.Equal(20, b1.Median);
        Assert.Equal(3, report.Ratios[0].Value);
        Assert.False(report.Ratios[0].Met);
        string table = ReportWriter.ToTable(report);
        Assert.Contains("decode.b16/b1", table);
        Assert.Contains(">= 4 MISSED", table);
        var json = JsonNode.Parse(ReportWriter.ToJson(report))!;
        Assert.Equal(20, json["figures"]![0]!["median"]!.GetValue<double>());
        Assert.False(json["ratios"]![0]!["met"]!.GetValue<bool>());
    }

    [Fact]
    public void Ratio_of_rounds_is_the_median_of_the_per_round_quotients()
    {
        var num = Figure.Of("a.tokens_per_s", "tokens/s", [10, 20, 30]);
        var den = Figure.Of("b.tokens_per_s", "tokens/s", [10, 5, 40]);
        // Quotients by round: 1, 4, 0.75 -> median 1 (the ratio of the medians would be 20 / 10 = 2).
        var ratio = Ratio.OfRounds("a/b", num, den, new Target(AtLeast: 0.9));
        Assert.Equal(1, ratio.Value, 12);
        Assert.Equal(("a.tokens_per_s", "b.tokens_per_s"), (ratio.Numerator, ratio.Denominator));
        Assert.True(ratio.Met);
        var e = Assert.Throws<ArgumentException>(() => Ratio.OfRounds("a/c", num, Figure.Of("c", "tokens/s", [1, 2])));
        Assert.Contains("a.tokens_per_s has 3 runs and c 2", e.Message);
    }

    private static (JsonObject Header, byte[] Data) ReadSafetensors(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!.AsObject();
        return (header, bytes[(8 + (int)n)..]);
    }

    private static float[] Floats(byte[] data, long begin, long end)
    {
        var values = new float[(end - begin) / 4];
        for (int i = 0; i < values.Length; i++) values[i] = BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan((int)begin + 4 * i));
        return values;
    }
}
