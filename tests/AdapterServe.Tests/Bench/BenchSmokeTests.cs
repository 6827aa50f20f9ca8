using System.Text.Json.Nodes;
using AdapterServe.Bench;
using AdapterServe.Engine;
using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.Bench;

/// <summary>One cache folder (the tiny model written once) shared by the smoke tests of this class, which xunit runs one after another.</summary>
public sealed class BenchCache : IDisposable
{
    public TempDir Dir { get; } = new();
    public void Dispose() => Dir.Dispose();
}

/// <summary>
/// Every scenario end to end on the <c>tiny</c> model with <c>--quick</c> sizes, through the program's entry point,
/// checking the JSON report has every field. No timing is asserted.
/// </summary>
public sealed class BenchSmokeTests(BenchCache cache) : IClassFixture<BenchCache>
{
    private static readonly string[] ReportFields = ["scenario", "started_at", "machine", "model", "settings", "figures", "ratios", "memory", "notes", "errors", "total_seconds"];
    private static readonly string[] MachineFields = ["cores", "os", "cpu", "runtime", "torch_sharp_version", "dtype", "device", "torch_threads", "load_average", "environment"];
    private static readonly string[] ModelFields = ["name", "directory", "hidden_size", "layers", "heads", "key_value_heads", "intermediate_size", "vocab_size", "tied_embeddings", "parameters", "context_length", "load_seconds"];
    private static readonly string[] FigureFields = ["name", "unit", "median", "runs", "target", "met"];
    private static readonly string[] RatioFields = ["name", "numerator", "denominator", "value", "target", "met"];
    private static readonly string[] MemoryFields = ["label", "at_seconds", "working_set_bytes", "private_bytes", "managed_heap_bytes", "torch_live_tensors", "torch_peak_tensors"];

    private async Task<(int ExitCode, JsonObject? Report, string Output, string Progress)> RunAsync(params string[] args)
    {
        string json = cache.Dir.Sub(args[0] + "-" + Guid.NewGuid().ToString("N")[..6] + ".json");
        var output = new StringWriter();
        var progress = new StringWriter();
        int rc = await BenchProgram.RunAsync([.. args, "--json", json], output, progress, TestContext.Current.CancellationToken);
        var report = File.Exists(json) ? JsonNode.Parse(File.ReadAllText(json))!.AsObject() : null;
        return (rc, report, output.ToString(), progress.ToString());
    }

    private Task<(int ExitCode, JsonObject? Report, string Output, string Progress)> RunTinyAsync(string scenario, params string[] extra) =>
        RunAsync([scenario, "--model-config", "tiny", "--quick", "--cache-dir", cache.Dir.Sub("cache"), .. extra]);

    private static void AssertFields(JsonObject o, IEnumerable<string> fields, string what)
    {
        foreach (var f in fields) Assert.True(o.ContainsKey(f), $"{what} lacks the field '{f}': {o.ToJsonString()}");
    }

    private static void AssertReport(JsonObject report, string scenario, IEnumerable<string> figures, IEnumerable<string> ratios, bool engine = true)
    {
        AssertFields(report, ReportFields, "the report");
        Assert.Equal(scenario, report["scenario"]!.GetValue<string>());
        var machine = report["machine"]!.AsObject();
        AssertFields(machine, MachineFields, "machine");
        Assert.Equal(Environment.ProcessorCount, machine["cores"]!.GetValue<int>());
        if (engine)
        {
            Assert.Equal("float32", machine["dtype"]!.GetValue<string>());
            Assert.True(machine["torch_threads"]!.GetValue<int>() >= 1);
            var model = report["model"]!.AsObject();
            AssertFields(model, ModelFields, "model");
            Assert.Equal("tiny", model["name"]!.GetValue<string>());
            Assert.Equal(32, model["hidden_size"]!.GetValue<int>());
        }
        var figureList = report["figures"]!.AsArray().Select(f => f!.AsObject()).ToList();
        foreach (var f in figureList) AssertFields(f, FigureFields, "a figure");
        Assert.Equal(figures.Order(), figureList.Select(f => f["name"]!.GetValue<string>()).Order());
        var ratioList = report["ratios"]!.AsArray().Select(r => r!.AsObject()).ToList();
        foreach (var r in ratioList) AssertFields(r, RatioFields, "a ratio");
        Assert.Equal(ratios.Order(), ratioList.Select(r => r["name"]!.GetValue<string>()).Order());
        foreach (var m in report["memory"]!.AsArray()) AssertFields(m!.AsObject(), MemoryFields, "a memory sample");
        // Every ratio divides the two quantities it names: two figures round by round (the median of the quotients),
        // or two memory samples (memory.<label>.<field>).
        foreach (var r in ratioList)
        {
            string numerator = r["numerator"]!.GetValue<string>(), denominator = r["denominator"]!.GetValue<string>();
            double expected = numerator.StartsWith("memory.", StringComparison.Ordinal)
                ? MemoryField(report, numerator) / MemoryField(report, denominator)
                : MedianOf(Runs(report, numerator).Zip(Runs(report, denominator), (n, d) => n / d).ToList());
            Assert.Equal(expected, r["value"]!.GetValue<double>(), 9);
        }
        Assert.Empty(report["errors"]!.AsArray());
    }

    private static double MemoryField(JsonObject report, string name)
    {
        var parts = name.Split('.');   // memory.<label>.<field>
        return report["memory"]!.AsArray().Single(m => m!["label"]!.GetValue<string>() == parts[1])![parts[2]]!.GetValue<double>();
    }

    private static double[] Runs(JsonObject report, string figure) =>
        report["figures"]!.AsArray().Single(f => f!["name"]!.GetValue<string>() == figure)!["runs"]!.AsArray().Select(r => r!.GetValue<double>()).ToArray();

    /// <summary>Median by sorting (the mean of the middle two for an even count).</summary>
    private static double MedianOf(IReadOnlyList<double> values)
    {
        var sorted = values.Order().ToArray();
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    private static double Median(JsonObject report, string figure) =>
        report["figures"]!.AsArray().Single(f => f!["name"]!.GetValue<string>() == figure)!["median"]!.GetValue<double>();

    [Fact]
    public async Task Decode_on_tiny_reports_throughput_latency_and_ratio_for_each_batch()
    {
        var (rc, report, output, progress) = await RunTinyAsync("decode", "--repeats", "3");
        Assert.True(rc == 0, progress);
        AssertReport(report!, "decode",
            ["decode.b1.tokens_per_s", "decode.b1.itl_ms_p50", "decode.b1.ttft_ms", .. Phases(1), "decode.b2.tokens_per_s", "decode.b2.itl_ms_p50", "decode.b2.ttft_ms", .. Phases(2),
             "decode.b1.floor_ms", "decode.b1.forward_ms", "decode.b1.tensors_per_step", "decode.b1.tensors_per_layer",
             "decode.b2.floor_ms", "decode.b2.forward_ms", "decode.b2.tensors_per_step", "decode.b2.tensors_per_layer"],
            ["decode.b2/b1", "decode.b1.overhead", "decode.b1.forward/floor", "decode.b2.overhead", "decode.b2.forward/floor"]);
        Assert.Contains("decode.b2.tokens_per_s", output);
        Assert.Equal(3, Runs(report!, "decode.b2.tokens_per_s").Length);   // the ratio (checked in AssertReport) is the median of 3 rounds
        // The engine thread's phases: the forward takes time, and what lies outside it is the sum of the other phases.
        Assert.True(Median(report!, "decode.b2.phase.forward_ms") > 0);
        var outside = Runs(report!, "decode.b2.outside_forward_ms");
        var others = EngineStepPhases.All.Where(p => p != "forward").Select(p => Runs(report!, $"decode.b2.phase.{p}_ms")).ToList();
        for (int run = 0; run < outside.Length; run++) Assert.Equal(outside[run], others.Sum(o => o[run]), 6);

        static IEnumerable<string> Phases(int b) =>
            [.. EngineStepPhases.All.Select(p => $"decode.b{b}.phase.{p}_ms"), $"decode.b{b}.outside_forward_ms"];
    }

    [Fact]
    public async Task Prefill_on_tiny_reports_prompt_throughput_and_first_token_time_per_length()
    {
        var (rc, report, _, progress) = await RunTinyAsync("prefill");
        Assert.True(rc == 0, progress);
        AssertReport(report!, "prefill",
            ["prefill.p16.tokens_per_s", "prefill.p16.ttft_ms", "prefill.p32.tokens_per_s", "prefill.p32.ttft_ms"],
            ["prefill.p32/p16"]);
        // tokens/s and time to first token describe the same runs: length / ttft.
        Assert.Equal(16 / (Median(report!, "prefill.p16.ttft_ms") / 1000), Median(report!, "prefill.p16.tokens_per_s"), 6);
    }

    [Fact]
    public async Task Soak_on_tiny_runs_every_generation_checks_every_answer_under_churn_and_samples_memory_at_start_middle_end()
    {
        var (rc, report, _, progress) = await RunTinyAsync("soak", "--generations", "24", "--churn-cycles", "6");
        Assert.True(rc == 0, progress);
        AssertReport(report!, "soak",
            ["soak.generations", "soak.errors", "soak.mismatches", "soak.churn_cycles", "soak.seconds", "soak.tokens_per_s", "soak.ttft_ms_p50", "soak.ttft_ms_p99"],
            ["soak.working_set.end/middle", "soak.live_tensors.end/middle"]);
        Assert.Equal(24, Median(report!, "soak.generations"));
        Assert.Equal(0, Median(report!, "soak.errors"));
        Assert.Equal(0, Median(report!, "soak.mismatches"));
        Assert.Equal(6, Median(report!, "soak.churn_cycles"));
        Assert.Equal(["start", "middle", "end"], report!["memory"]!.AsArray().Select(m => m!["label"]!.GetValue<string>()));
        Assert.Contains(report["notes"]!.AsArray(), n => n!.GetValue<string>().StartsWith("each generation on the base or one of 2 r16 all-projection adapters", StringComparison.Ordinal));
        var target = report["ratios"]!.AsArray().Single(r => r!["name"]!.GetValue<string>() == "soak.working_set.end/middle")!["target"]!;
        Assert.Equal(0.90, target["at_least"]!.GetValue<double>());
        Assert.Equal(1.10, target["at_most"]!.GetValue<double>());
    }

    [Fact]
    public async Task Adapters_on_tiny_reports_every_case_as_a_ratio_to_the_base_and_to_one_adapter()
    {
        var (rc, report, output, progress) = await RunTinyAsync("adapters");
        Assert.True(rc == 0, progress);
        string[] single = ["lora-r8", "lora-r16", "lora-r64", "lora-r16-mlp", "smore-2x4"];
        var figures = new List<string>();
        var ratios = new List<string>();
        // Per line: throughput, inter-token gap and the engine thread's time per step by phase.
        static string[] Line(string c, int b) =>
            [$"adapters.{c}.b{b}.tokens_per_s", $"adapters.{c}.b{b}.itl_ms_p50", .. EngineStepPhases.All.Select(p => $"adapters.{c}.b{b}.phase.{p}_ms")];
        foreach (int b in new[] { 1, 4 })
        {
            figures.AddRange(Line("base", b));
            foreach (var c in single)
            {
                figures.AddRange(Line(c, b));
                ratios.Add($"adapters.{c}.b{b}/base");
            }
            foreach (var c in new[] { "lokr-r16", "moka-4", "mixer-top3-of-6", "omoe-4" })    // Kronecker and mixture cases, also compared to one r16 LoRA
            {
                figures.AddRange(Line(c, b));
                ratios.AddRange([$"adapters.{c}.b{b}/base", $"adapters.{c}.b{b}/lora-r16"]);
            }
            ratios.Add($"adapters.smore-2x4.b{b}/lora-r16-mlp");                     // S'MoRE against the r16 LoRA on the same MLP projections
        }
        figures.AddRange(Line("lora-r16-x4", 4));
        ratios.AddRange(["adapters.lora-r16-x4.b4/base", "adapters.lora-r16-x4.b4/lora-r16"]);
        figures.AddRange(Line("mixer-top3-of-6-x4", 4));   // 4 mixers against one
        ratios.AddRange(["adapters.mixer-top3-of-6-x4.b4/base", "adapters.mixer-top3-of-6-x4.b4/mixer-top3-of-6"]);
        foreach (var (many, one) in new[] { ("omoe-4-x4", "omoe-4"), ("smore-2x4-x4", "smore-2x4") })                   // 4 of one configuration against one
        {
            figures.AddRange(Line(many, 4));
            ratios.AddRange([$"adapters.{many}.b4/base", $"adapters.{many}.b4/{one}"]);
        }
        // Per line the weight bytes a step reads, and the throughput ratios that memory traffic alone allows.
        string[] lines = [.. single, "lokr-r16", "moka-4", "mixer-top3-of-6", "omoe-4", "lora-r16-x4", "mixer-top3-of-6-x4", "omoe-4-x4", "smore-2x4-x4"];
        figures.Add("adapters.base.weight_bytes");
        foreach (var c in lines)
        {
            figures.Add($"adapters.{c}.weight_bytes");
            ratios.Add($"adapters.{c}.weight_bytes_bound/base");
        }
        ratios.AddRange(new[] { "lokr-r16", "moka-4", "mixer-top3-of-6", "omoe-4" }.Select(c => $"adapters.{c}.weight_bytes_bound/lora-r16"));
        ratios.AddRange(["adapters.smore-2x4.weight_bytes_bound/lora-r16-mlp", "adapters.lora-r16-x4.weight_bytes_bound/lora-r16",
            "adapters.mixer-top3-of-6-x4.weight_bytes_bound/mixer-top3-of-6", "adapters.omoe-4-x4.weight_bytes_bound/omoe-4", "adapters.smore-2x4-x4.weight_bytes_bound/smore-2x4"]);
        AssertReport(report!, "adapters", figures, ratios);
        // The base reads its float32 parameters; the bound is the bytes' own ratio: four distinct mixers read the base plus
        // four mixers' experts, one mixer the base plus one's.
        double Bytes(string name) => report!["figures"]!.AsArray().Single(f => f!["name"]!.GetValue<string>() == name)!["median"]!.GetValue<double>();
        Assert.Equal(4.0 * report!["model"]!["parameters"]!.GetValue<long>(), Bytes("adapters.base.weight_bytes"));
        double bound = report!["ratios"]!.AsArray().Single(r => r!["name"]!.GetValue<string>() == "adapters.mixer-top3-of-6-x4.weight_bytes_bound/mixer-top3-of-6")!["value"]!.GetValue<double>();
        Assert.Equal(Bytes("adapters.mixer-top3-of-6.weight_bytes") / Bytes("adapters.mixer-top3-of-6-x4.weight_bytes"), bound, 9);
        Assert.Equal(4 * (Bytes("adapters.mixer-top3-of-6.weight_bytes") - Bytes("adapters.base.weight_bytes")),
            Bytes("adapters.mixer-top3-of-6-x4.weight_bytes") - Bytes("adapters.base.weight_bytes"), 3);

        var settings = report!["settings"]!.AsObject();
        Assert.Equal([1, 4], settings["batches"]!.AsArray().Select(b => b!.GetValue<int>()));
        Assert.Equal(4, settings["device_cache"]!.GetValue<int>());
        Assert.Equal(1, report["figures"]!.AsArray().Select(f => f!["runs"]!.AsArray().Count).Distinct().Single());   // --quick: one recorded run
        // Issue 5's targets (issue 13 raised the LoRA one to 0.93) sit on exactly the ratios they name (16 distinct adapters need a batch of 32: skipped here).
        var targeted = report["ratios"]!.AsArray().Where(r => r!["target"] is not null).Select(r => r!["name"]!.GetValue<string>()).ToList();
        Assert.Equal(["adapters.lora-r16.b1/base", "adapters.lokr-r16.b1/lora-r16", "adapters.moka-4.b1/lora-r16", "adapters.mixer-top3-of-6.b1/lora-r16", "adapters.omoe-4.b1/lora-r16", "adapters.smore-2x4.b1/lora-r16-mlp"], targeted);   // issues 9 and 10: vs one r16 LoRA on the same projections
        Assert.Equal(0.93, report["ratios"]!.AsArray().Single(r => r!["name"]!.GetValue<string>() == "adapters.lora-r16.b1/base")!["target"]!["at_least"]!.GetValue<double>());
        var notes = report["notes"]!.AsArray().Select(n => n!.GetValue<string>()).ToList();
        Assert.Contains(notes, n => n.StartsWith("lora-r16-x16 skipped: 16 distinct adapters need a batch of at least 16", StringComparison.Ordinal));
        Assert.Contains(notes, n => n.StartsWith("lora-r16-x32 skipped", StringComparison.Ordinal));
        // r8-0, r16-0..3, r64-0, LoKr, MoKA, the two mixtures, three more mixers of the x4 line (its first is the single mixer), three more OMoE
        // adapters of theirs, r16-mlp-0, the S'MoRE tree and three more of its x4 line all stay resident: more slots than --quick's 4.
        Assert.Contains("device cache raised from 4 to 21: the run uses 21 distinct adapters, all kept resident", notes);
        Assert.Contains("adapters.lora-r16-x4.b4/lora-r16", output);
    }

    [Fact]
    public async Task Load_on_tiny_times_cold_adapters_both_ways_and_samples_memory_before_and_after()
    {
        var (rc, report, _, progress) = await RunTinyAsync("load");
        Assert.True(rc == 0, progress);
        AssertReport(report!, "load",
            ["load.register_ms_per_adapter", "load.ms_p50", "load.ms_p95", "load.read_ms_p50", "load.warmup_ms_p50", "load.e2e_ms_p50", "load.e2e_ms_p95",
             "load.cold_ttft_ms_p50", "load.base_ttft_ms"],
            ["load.working_set.after/before"]);
        Assert.Equal(["before", "registered", "after"], report!["memory"]!.AsArray().Select(m => m!["label"]!.GetValue<string>()));

        var settings = report["settings"]!.AsObject();
        Assert.Equal(6, settings["registered"]!.GetValue<int>());
        Assert.Equal(2, settings["device_cache"]!.GetValue<int>());
        int samples = settings["load_samples"]!.GetValue<int>();
        Assert.Equal(4, samples);
        Assert.Equal(4, settings["warmup"]!.GetValue<int>());   // twice the device cache
        Assert.Equal(4, Runs(report, "load.warmup_ms_p50").Length);
        var figures = report["figures"]!.AsArray().ToDictionary(f => f!["name"]!.GetValue<string>(), f => f!.AsObject());
        foreach (var name in new[] { "load.ms_p50", "load.read_ms_p50", "load.e2e_ms_p50", "load.cold_ttft_ms_p50", "load.base_ttft_ms" })
            Assert.Equal(samples, Runs(report, name).Length);
        // Each cache sample is ready only after its read into the host tier finished.
        Assert.All(Runs(report, "load.ms_p50").Zip(Runs(report, "load.read_ms_p50")), p => Assert.True(p.First >= p.Second, $"ready {p.First} ms before read {p.Second} ms"));
        // End to end = a cold request's time to first token minus the median base one, sample by sample.
        double baseMs = Median(report, "load.base_ttft_ms");
        Assert.Equal(Runs(report, "load.cold_ttft_ms_p50").Select(ms => ms - baseMs), Runs(report, "load.e2e_ms_p50"), (x, y) => Math.Abs(x - y) < 1e-9);
        // The target applies to 135m only.
        Assert.Null(figures["load.ms_p50"]["target"]);

        var notes = report["notes"]!.AsArray().Select(n => n!.GetValue<string>()).ToList();
        // The device tier is bounded by --device-cache (2) and the host tier by one; no sample found its adapter resident.
        Assert.Contains(notes, n => n.StartsWith("resident at the end: 2 adapters on the device", StringComparison.Ordinal));
        Assert.DoesNotContain(notes, n => n.Contains("already resident", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_run_cut_off_by_its_timeout_still_writes_its_report_with_the_error()
    {
        var (rc, report, output, progress) = await RunTinyAsync("decode", "--timeout-s", "0.001");
        Assert.Equal(1, rc);
        Assert.NotNull(report);
        var error = Assert.Single(report["errors"]!.AsArray())!.GetValue<string>();
        Assert.StartsWith("decode did not finish within --timeout-s 0.001", error);
        Assert.Contains("did not finish within", progress);
        Assert.Contains("AdapterServe bench", output);
    }

    [Fact]
    public async Task Serve_against_a_real_loopback_server_reports_what_went_over_the_wire()
    {
        string[] models = ["ada", "bob", "cyd"];
        await using var server = await FakeCompletionsServer.StartAsync(models, apiKey: "k-123");
        var (rc, report, _, progress) = await RunAsync("serve", "--url", new Uri(server.Url, "v1").ToString(), "--api-key", "k-123", "--adapters", "ada,bob,cyd",
            "--requests", "9", "--concurrency", "3", "--max-tokens", "5", "--distribution", "zipf:1.2", "--warmup", "0", "--timeout-s", "60");
        Assert.True(rc == 0, progress);
        AssertReport(report!, "serve",
            ["serve.requests_per_s", "serve.output_tokens_per_s", "serve.ttft_ms_p50", "serve.ttft_ms_p95", "serve.ttft_ms_p99",
             "serve.itl_ms_p50", "serve.itl_ms_p95", "serve.itl_ms_p99", "serve.completed", "serve.errors", "serve.unfinished", "serve.seconds",
             "serve.requests.ada", "serve.requests.bob", "serve.requests.cyd"],
            [], engine: false);
        Assert.Equal(9, Median(report!, "serve.completed"));
        Assert.Equal(0, Median(report!, "serve.errors"));
        Assert.Equal(45, server.TokensSent);
        foreach (var m in models)
            Assert.Equal(server.RequestsPerModel.GetValueOrDefault(m), (int)Median(report!, $"serve.requests.{m}"));
        double seconds = Median(report!, "serve.seconds");
        Assert.Equal(45 / seconds, Median(report!, "serve.output_tokens_per_s"), 6);
        Assert.Null(report!["machine"]!["dtype"]);   // the server under test decides its dtype
    }

    [Fact]
    public async Task Serve_counts_requests_the_server_refuses_as_errors()
    {
        await using var server = await FakeCompletionsServer.StartAsync(["ada"], apiKey: "k-123");
        var (rc, report, _, _) = await RunAsync("serve", "--url", server.Url.ToString(), "--api-key", "k-123", "--adapters", "ada,ghost",
            "--requests", "6", "--concurrency", "2", "--max-tokens", "2", "--warmup", "0", "--timeout-s", "60");
        Assert.Equal(0, rc);
        int served = server.RequestsPerModel.GetValueOrDefault("ada");
        Assert.Equal(served, (int)Median(report!, "serve.completed"));
        Assert.Equal(6 - served, (int)Median(report!, "serve.errors"));
        if (served < 6) Assert.Contains(report!["notes"]!.AsArray(), n => n!.GetValue<string>().Contains("HTTP 404"));
    }

    [Fact]
    public async Task Serve_refuses_a_url_that_is_not_loopback()
    {
        var (rc, report, _, progress) = await RunAsync("serve", "--url", "http://10.1.2.3:8000", "--requests", "1");
        Assert.Equal(2, rc);
        Assert.Contains("not loopback", progress);
        Assert.Null(report);
    }
}
