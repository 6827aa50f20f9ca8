using AdapterServe.Engine;
using AdapterServe.Modeling.Tokenization;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Engine;

public class GenerationEngineTests
{
    private static string ModelDir => TinyModels.Directory(TinyModels.Llama);

    [Fact]
    public async Task Greedy_tokens_equal_the_naive_reference_argmax()
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir);
        using var naive = new NaiveLlama(ModelDir);
        var prompt = new List<int> { 12, 40, 7, 255 };
        var result = (await EngineRunner.RunAsync(engine, EngineRunner.Greedy(prompt, 8)))[0];
        var seq = new List<int>(prompt);
        foreach (var token in result.Tokens)
        {
            Assert.Equal((int)naive.Logits(seq)[-1].argmax().item<long>(), token);
            seq.Add(token);
        }
        Assert.Equal(8, result.Tokens.Count);
        Assert.Equal(FinishReason.Length, result.Reason);
    }

    [Fact]
    public async Task Sampling_reads_each_sequences_own_row_of_logits()
    {
        // Near-zero temperature (still the sampling path: top_k 0) puts all the mass on the row's argmax, so every
        // sampled token of three concurrent sequences must be the naive model's argmax for that sequence, wherever a
        // clear winner exists (a gap ≥ 0.01 between the two best logits: the runner-up's odds are below e^-1000).
        await using var engine = await EngineRunner.StartAsync(ModelDir, maxBatch: 4);
        using var naive = new NaiveLlama(ModelDir);
        int[][] prompts = [[12, 40, 7, 255], [3, 9], [77, 1, 5, 200, 31]];
        var results = await Task.WhenAll(prompts.Select(p => EngineRunner.RunAsync(engine, EngineRunner.Greedy(p, 8) with
        {
            Sampling = new SamplingParams { Temperature = 1e-5f, Seed = 5, MaxTokens = 8, IgnoreEos = true },
        })));
        int checkedTokens = 0;
        for (int i = 0; i < prompts.Length; i++)
        {
            var seq = new List<int>(prompts[i]);
            foreach (var token in results[i][0].Tokens)
            {
                var (top, ids) = naive.Logits(seq)[-1].to_type(ScalarType.Float64).topk(2);
                if (top[0].item<double>() - top[1].item<double>() >= 0.01)
                {
                    Assert.Equal((int)ids[0].item<long>(), token);
                    checkedTokens++;
                }
                seq.Add(token);
            }
        }
        Assert.True(checkedTokens >= 12, $"only {checkedTokens} of 24 tokens had a clear winner");
    }

    [Fact]
    public async Task Concurrent_requests_of_different_lengths_equal_each_request_alone()
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir, maxBatch: 4, maxTokensPerStep: 16);
        int[][] prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [100], [42, 43, 44, 45, 46], [7, 7]];
        var alone = new List<Completion>();
        foreach (var p in prompts) alone.Add((await EngineRunner.RunAsync(engine, EngineRunner.Greedy(p, 6 + p.Length % 5, logprobs: 2)))[0]);
        var together = await Task.WhenAll(prompts.Select(p => EngineRunner.RunAsync(engine, EngineRunner.Greedy(p, 6 + p.Length % 5, logprobs: 2))));
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(alone[i].Tokens, together[i][0].Tokens);
            for (int t = 0; t < alone[i].Tokens.Count; t++)
                Assert.Equal(alone[i].Logprobs[t]!.Logprob, together[i][0].Logprobs[t]!.Logprob, 1e-5);
        }
    }

    [Fact]
    public async Task Seeded_sampling_is_reproducible_and_n_choices_differ()
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir);
        GenerationRequest Req() => new()
        {
            RequestId = "r", PromptTokens = [3, 4, 5], N = 3,
            Sampling = new SamplingParams { Temperature = 1.5f, TopP = 0.95f, TopK = 50, Seed = 1234, MaxTokens = 12, IgnoreEos = true },
        };
        var a = await EngineRunner.RunAsync(engine, Req());
        var b = await EngineRunner.RunAsync(engine, Req());
        for (int i = 0; i < 3; i++) Assert.Equal(a[i].Tokens, b[i].Tokens);
        Assert.False(a[0].Tokens.SequenceEqual(a[1].Tokens) && a[1].Tokens.SequenceEqual(a[2].Tokens), "three seeded choices should not all be identical");
    }

    [Fact]
    public async Task Stop_string_ends_the_choice_and_is_not_emitted()
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir);
        var free = (await EngineRunner.RunAsync(engine, EngineRunner.Greedy([9, 8, 7], 20)))[0];
        Assert.True(free.Text.Length > 6, $"need some text to cut: '{free.Text}'");
        string stop = free.Text.Substring(3, 3);
        var req = EngineRunner.Greedy([9, 8, 7], 20) with { Sampling = new SamplingParams { Temperature = 0, MaxTokens = 20, IgnoreEos = true, StopStrings = [stop] } };
        var cut = (await EngineRunner.RunAsync(engine, req))[0];
        Assert.Equal(FinishReason.Stop, cut.Reason);
        Assert.Equal(free.Text[..free.Text.IndexOf(stop, StringComparison.Ordinal)], cut.Text);
    }

    [Fact]
    public async Task Prompt_logprobs_equal_the_naive_log_softmax()
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir);
        using var naive = new NaiveLlama(ModelDir);
        int[] prompt = [10, 20, 30, 40, 50];
        var req = EngineRunner.Greedy(prompt, 1, logprobs: 0) with { PromptLogprobs = true };
        var result = (await EngineRunner.RunAsync(engine, req))[0];
        var expected = naive.Logits(prompt).log_softmax(-1);
        Assert.Null(result.PromptLogprobs![0]);
        for (int i = 1; i < prompt.Length; i++)
            Assert.Equal(expected[i - 1, prompt[i]].item<double>(), result.PromptLogprobs[i]!.Logprob, 1e-4);
    }

    [Fact]
    public async Task Cancelled_request_frees_its_sequence()
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir, maxContext: 128);
        using var cts = new CancellationTokenSource();
        var reader = engine.Submit(EngineRunner.Greedy([1, 2], 100), cts.Token);
        Assert.IsType<TokenEvent>(await reader.ReadAsync());
        cts.Cancel();
        FinishEvent? finish = null;
        await foreach (var e in reader.ReadAllAsync()) if (e is FinishEvent f) finish = f;
        Assert.Equal(FinishReason.Cancelled, finish!.Reason);
        Assert.Equal(0, engine.RunningSequences);
    }

    [Fact]
    public async Task Queue_beyond_its_bound_is_refused()
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir, maxBatch: 1, maxQueue: 1, maxContext: 128);
        using var cts = new CancellationTokenSource();
        engine.Submit(EngineRunner.Greedy([1], 120), cts.Token);
        while (engine.RunningSequences == 0) await Task.Yield();   // the first request runs; the next one waits
        engine.Submit(EngineRunner.Greedy([2], 5), cts.Token);
        Assert.Throws<QueueFullException>(() => engine.Submit(EngineRunner.Greedy([3], 5), cts.Token));
        cts.Cancel();
    }

    [Fact]
    public async Task Prompt_longer_than_the_context_is_refused()
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir, maxContext: 16);
        Assert.Throws<ContextLengthExceededException>(() => engine.Submit(EngineRunner.Greedy(Enumerable.Range(1, 16).ToList(), 1), default));
        Assert.Throws<ContextLengthExceededException>(() => engine.Submit(EngineRunner.Greedy([1, 2, 3], 14), default));
    }

    [Fact]
    public async Task Native_tensors_stay_flat_over_500_generations()
    {
        await using var engine = await EngineRunner.StartAsync(ModelDir, maxBatch: 8, maxContext: 64);
        async Task Generate(int count)
        {
            for (int i = 0; i < count; i += 8)
                await Task.WhenAll(Enumerable.Range(i, 8).Select(j => EngineRunner.RunAsync(engine, EngineRunner.Greedy([1 + j % 200, 2, 3], 2 + j % 3, logprobs: j % 2))));
        }
        await Generate(40);
        long warm = engine.LiveTensors;
        await Generate(520);
        Assert.Equal(warm, engine.LiveTensors);
    }

    [Fact]
    public async Task Stories260K_greedy_decode_is_coherent_English()
    {
        string dir = SharedModels.Require("stories260K-hf");
        await using var engine = await EngineRunner.StartAsync(dir);
        var prompt = engine.Tokenizer.Encode("Once upon a time");
        var req = EngineRunner.Greedy(prompt, 48) with { Sampling = new() { Temperature = 0, MaxTokens = 48 } };
        var text = (await EngineRunner.RunAsync(engine, req))[0].Text;
        TestContext.Current.SendDiagnosticMessage($"stories260K: Once upon a time{text}");
        Assert.Contains("Lily", text);
        Assert.Contains(" the ", text);
    }
}
