using System.Text;
using System.Text.RegularExpressions;
using AdapterServe.Engine;
using AdapterServe.Tests.Server;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Tests.Engine;

/// <summary>Tests that move <c>adapterserve_engine_step_failures_total</c>, run one after another so each sees only its own counts.</summary>
[CollectionDefinition(Name)]
public sealed class StepFailureCollection
{
    public const string Name = "StepFailures";
}

/// <summary>
/// A forward step that throws, on the real engine with a <see cref="FaultyAdapterBinder"/>: the same requests run once
/// with the fault and once without (the reference), and every sequence the fault does not concern must come out the same.
/// </summary>
[Collection(StepFailureCollection.Name)]
public sealed partial class StepFailureTests
{
    private const int CleanDecodeSteps = 3;
    private static string ModelDir => TinyModel.Directory;   // untied LM head: greedy continuations vary

    [GeneratedRegex("step-[0-9a-f]{12}")]
    private static partial Regex ErrorId();

    /// <summary>Requests on the base (greedy with top logprobs, seeded sampling, prompt logprobs, n = 2), all longer than the faulty one's clean part.</summary>
    private static List<GenerationRequest> Others() =>
    [
        EngineRunner.Greedy([5, 17, 33], 24, logprobs: 2),
        new() { RequestId = "seeded", PromptTokens = [40, 41, 42, 43], Sampling = new SamplingParams { Temperature = 1.1f, TopP = 0.9f, Seed = 7, MaxTokens = 24, IgnoreEos = true, Logprobs = 0 } },
        EngineRunner.Greedy([9, 8, 7, 6, 5], 20, logprobs: 1) with { PromptLogprobs = true },
        new() { RequestId = "seeded-n2", PromptTokens = [100, 200], N = 2, Sampling = new SamplingParams { Temperature = 1.3f, Seed = 99, MaxTokens = 24, IgnoreEos = true } },
    ];

    private static GenerationRequest Faulty(int n = 1) =>
        EngineRunner.Greedy([11, 12, 13], 24, logprobs: 2) with { Adapters = [new AdapterRef(FaultyAdapterBinder.Name)], N = n };

    /// <summary>Starts an engine on <paramref name="binder"/>, submits the others and then the faulty request together, and collects them all.</summary>
    private static async Task<(Completion[][] Others, Completion[] Faulty)> RunAsync(FaultyAdapterBinder binder, List<GenerationRequest> others, GenerationRequest faulty, ILoggerFactory? logs = null)
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir, maxBatch: 8, maxContext: 128, adapters: binder, loggerFactory: logs);
        var runs = others.Select(r => EngineRunner.RunAsync(engine, r)).ToList();
        var faultyRun = EngineRunner.RunAsync(engine, faulty);
        return (await Task.WhenAll(runs), await faultyRun);
    }

    private static void AssertSame(Completion expected, Completion actual)
    {
        Assert.Equal(FinishReason.Length, actual.Reason);
        Assert.Equal(expected.Tokens, actual.Tokens);
        Assert.Equal(expected.Text, actual.Text);
        Assert.Equal(expected.Logprobs.Count, actual.Logprobs.Count);
        for (int t = 0; t < expected.Logprobs.Count; t++)
        {
            if (expected.Logprobs[t] is null) { Assert.Null(actual.Logprobs[t]); continue; }
            Assert.Equal(expected.Logprobs[t]!.Logprob, actual.Logprobs[t]!.Logprob, 1e-5);
            Assert.Equal(expected.Logprobs[t]!.Top.Select(x => x.TokenId), actual.Logprobs[t]!.Top.Select(x => x.TokenId));
        }
        Assert.Equal(expected.PromptLogprobs?.Count, actual.PromptLogprobs?.Count);
        for (int t = 1; t < (expected.PromptLogprobs?.Count ?? 0); t++)
            Assert.Equal(expected.PromptLogprobs![t]!.Logprob, actual.PromptLogprobs![t]!.Logprob, 1e-5);
    }

    private static void AssertOthersSame(Completion[][] expected, Completion[][] actual)
    {
        for (int r = 0; r < expected.Length; r++)
            for (int c = 0; c < expected[r].Length; c++)
                AssertSame(expected[r][c], actual[r][c]);
    }

    private static async Task<Server.Metrics> MetricsAsync()
    {
        // Configured as the server does before its first scrape: a scrape of the default registry before that would turn
        // on prometheus-net's default .NET series for the rest of the test process (and fail the /metrics noise tests).
        AdapterServe.Server.Observability.ServerMetrics.SuppressDefaultNoise();
        using var text = new MemoryStream();
        await Prometheus.Metrics.DefaultRegistry.CollectAndExportAsTextAsync(text, TestContext.Current.CancellationToken);
        return new Server.Metrics(Encoding.UTF8.GetString(text.ToArray()));
    }

    private static async Task<Dictionary<string, double>> FailureCountsAsync()
    {
        var metrics = await MetricsAsync();
        return new[] { "retried_ok", "isolated", "failed" }.ToDictionary(o => o, o => metrics.Value($"adapterserve_engine_step_failures_total{{outcome=\"{o}\"}}"));
    }

    private static async Task AssertCountedAsync(Dictionary<string, double> before, string outcome)
    {
        var after = await FailureCountsAsync();
        foreach (var (o, value) in after) Assert.Equal(o == outcome ? 1 : 0, value - before[o]);
    }

    [Fact]
    public async Task A_sequence_whose_steps_always_throw_fails_alone_with_an_error_id_in_its_event_and_the_log_while_the_others_equal_a_clean_run()
    {
        var others = Others();
        var (clean, cleanFaulty) = await RunAsync(new FaultyAdapterBinder(Fault.None, CleanDecodeSteps, TinyModel.Config.NumHiddenLayers), others, Faulty());
        var before = await FailureCountsAsync();
        var capture = new LogCapture();
        using var logs = LoggerFactory.Create(b => b.AddProvider(capture));
        var binder = new FaultyAdapterBinder(Fault.Always, CleanDecodeSteps, TinyModel.Config.NumHiddenLayers);

        var (faulted, faulty) = await RunAsync(binder, others, Faulty(), logs);

        AssertOthersSame(clean, faulted);
        var failed = Assert.Single(faulty);
        Assert.Equal(FinishReason.Error, failed.Reason);
        Assert.Equal(EngineErrorCodes.StepFailed, failed.Finish!.ErrorCode);
        string id = ErrorId().Match(failed.Finish.Error ?? "").Value;
        Assert.NotEmpty(id);
        // Everything it produced before the fault equals the clean run: 1 token from the prefill, then the clean decodes.
        Assert.Equal(cleanFaulty[0].Tokens.Take(1 + CleanDecodeSteps), failed.Tokens);
        Assert.True(binder.LargestFailingBatch > 1, "the fault should hit a step shared with other sequences");
        var line = Assert.Single(capture.Entries, e => e.Level == LogLevel.Error && e.Message.Contains(id, StringComparison.Ordinal));
        Assert.EndsWith(nameof(GenerationEngine), line.Category);
        await AssertCountedAsync(before, "isolated");
    }

    [Fact]
    public async Task A_step_that_throws_once_is_retried_and_every_sequence_equals_a_clean_run()
    {
        var others = Others();
        var (clean, cleanFaulty) = await RunAsync(new FaultyAdapterBinder(Fault.None, CleanDecodeSteps, TinyModel.Config.NumHiddenLayers), others, Faulty());
        var before = await FailureCountsAsync();
        var binder = new FaultyAdapterBinder(Fault.Once, CleanDecodeSteps, TinyModel.Config.NumHiddenLayers);

        var (faulted, faulty) = await RunAsync(binder, others, Faulty());

        Assert.Equal(1, binder.Throws);
        Assert.True(binder.LargestFailingBatch > 1, "the fault should hit a step shared with other sequences");
        AssertOthersSame(clean, faulted);
        AssertSame(cleanFaulty[0], faulty[0]);
        await AssertCountedAsync(before, "retried_ok");
    }

    [Fact]
    public async Task A_step_that_throws_twice_and_then_runs_when_split_fails_nothing_and_every_sequence_equals_a_clean_run()
    {
        var others = Others();
        var (clean, cleanFaulty) = await RunAsync(new FaultyAdapterBinder(Fault.None, CleanDecodeSteps, TinyModel.Config.NumHiddenLayers), others, Faulty());
        var before = await FailureCountsAsync();
        var binder = new FaultyAdapterBinder(Fault.Twice, CleanDecodeSteps, TinyModel.Config.NumHiddenLayers);

        var (faulted, faulty) = await RunAsync(binder, others, Faulty());

        Assert.Equal(2, binder.Throws);
        Assert.True(binder.LargestFailingBatch > 1, "the fault should hit a step shared with other sequences");
        AssertOthersSame(clean, faulted);
        AssertSame(cleanFaulty[0], faulty[0]);
        await AssertCountedAsync(before, "retried_ok");
    }

    [Fact]
    public async Task Two_failing_sequences_in_one_batch_are_both_found_by_splitting_it_and_the_rest_equal_a_clean_run()
    {
        var others = Others();
        var (clean, cleanFaulty) = await RunAsync(new FaultyAdapterBinder(Fault.None, CleanDecodeSteps, TinyModel.Config.NumHiddenLayers), others, Faulty(n: 2));
        var before = await FailureCountsAsync();

        var (faulted, faulty) = await RunAsync(new FaultyAdapterBinder(Fault.Always, CleanDecodeSteps, TinyModel.Config.NumHiddenLayers), others, Faulty(n: 2));

        AssertOthersSame(clean, faulted);
        Assert.Equal(2, faulty.Length);
        for (int c = 0; c < 2; c++)
        {
            Assert.Equal(FinishReason.Error, faulty[c].Reason);
            Assert.Equal(EngineErrorCodes.StepFailed, faulty[c].Finish!.ErrorCode);
            Assert.Equal(cleanFaulty[c].Tokens.Take(1 + CleanDecodeSteps), faulty[c].Tokens);
        }
        Assert.Equal(ErrorId().Match(faulty[0].Finish!.Error!).Value, ErrorId().Match(faulty[1].Finish!.Error!).Value);   // one failure, one id
        await AssertCountedAsync(before, "isolated");
    }

    [Fact]
    public async Task A_step_whose_only_sequence_always_throws_fails_it_and_counts_as_failed()
    {
        var before = await FailureCountsAsync();

        var (_, faulty) = await RunAsync(new FaultyAdapterBinder(Fault.Always, CleanDecodeSteps, TinyModel.Config.NumHiddenLayers), [], Faulty());

        var failed = Assert.Single(faulty);
        Assert.Equal(FinishReason.Error, failed.Reason);
        Assert.Matches(ErrorId(), failed.Finish!.Error!);
        Assert.Equal(1 + CleanDecodeSteps, failed.Tokens.Count);
        await AssertCountedAsync(before, "failed");
    }
}
