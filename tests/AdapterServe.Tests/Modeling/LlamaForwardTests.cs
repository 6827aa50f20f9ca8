using AdapterServe.Modeling;
using AdapterServe.Modeling.Llama;
using AdapterServe.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Modeling;

public class LlamaForwardTests
{
    public static TheoryData<string> Layouts => new() { "llama", "qwen2" };
    private static ModelConfig Config(string layout) => layout == "llama" ? TinyModels.Llama : TinyModels.Qwen2Like;

    private static void AssertClose(Tensor expected, Tensor actual, double atol = 1e-5)
    {
        var diff = (expected.to_type(ScalarType.Float64) - actual.to_type(ScalarType.Float64)).abs().max().item<double>();
        Assert.True(diff < atol, $"max |diff| = {diff:E3} ≥ {atol:E1}");
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void Prefill_then_cached_decode_equals_recomputing_from_scratch(string layout)
    {
        string dir = TinyModels.Directory(Config(layout));
        using var model = LlamaModel.Load(dir, ScalarType.Float32, CPU);
        using var naive = new NaiveLlama(dir);
        using var cache = new KvCache(model.Config, 2, 64, ScalarType.Float32, CPU);
        var tokens = new List<int> { 5, 17, 200, 3, 99, 42, 7 };
        Assert.True(cache.TryAllocate(out int slot));

        var logits = model.Forward(new ForwardBatch([new SequenceStep(slot, 0, tokens, AllLogits: true)]), cache);
        AssertClose(naive.Logits(tokens), logits);
        for (int step = 0; step < 6; step++)
        {
            int next = (int)logits[-1].argmax().item<long>();
            tokens.Add(next);
            logits = model.Forward(new ForwardBatch([new SequenceStep(slot, tokens.Count - 1, [next])]), cache);
            AssertClose(naive.Logits(tokens)[-1].unsqueeze(0), logits);
        }
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void Batch_of_different_length_sequences_equals_each_sequence_alone(string layout)
    {
        string dir = TinyModels.Directory(Config(layout));
        using var model = LlamaModel.Load(dir, ScalarType.Float32, CPU);
        using var naive = new NaiveLlama(dir);
        using var cache = new KvCache(model.Config, 4, 64, ScalarType.Float32, CPU);
        int[][] prompts = [[1, 2, 3], [250, 4, 8, 15, 16, 23, 42, 11, 12], [77], [9, 9, 9, 9, 9]];
        var seqs = prompts.Select(p => p.ToList()).ToArray();

        // Step 1: sequences 0 and 1 prefill together.
        var l1 = model.Forward(new ForwardBatch([new SequenceStep(0, 0, seqs[0]), new SequenceStep(1, 0, seqs[1])]), cache);
        // Step 2: 0 and 1 decode one token each while 2 and 3 prefill: prefill and decode mixed in one step.
        seqs[0].Add(11); seqs[1].Add(12);
        var l2 = model.Forward(new ForwardBatch([
            new SequenceStep(2, 0, seqs[2]), new SequenceStep(0, 3, [11]), new SequenceStep(3, 0, seqs[3]), new SequenceStep(1, 9, [12])]), cache);
        AssertClose(naive.Logits(seqs[0].Take(3).ToList())[-1], l1[0]);
        AssertClose(naive.Logits(seqs[1].Take(9).ToList())[-1], l1[1]);
        AssertClose(naive.Logits(seqs[2])[-1], l2[0]);
        AssertClose(naive.Logits(seqs[0])[-1], l2[1]);
        AssertClose(naive.Logits(seqs[3])[-1], l2[2]);
        AssertClose(naive.Logits(seqs[1])[-1], l2[3]);
    }

    [Fact]
    public void Chunked_prefill_equals_whole_prefill()
    {
        string dir = TinyModels.Directory(TinyModels.Llama);
        using var model = LlamaModel.Load(dir, ScalarType.Float32, CPU);
        using var naive = new NaiveLlama(dir);
        using var cache = new KvCache(model.Config, 1, 64, ScalarType.Float32, CPU);
        int[] prompt = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
        model.Forward(new ForwardBatch([new SequenceStep(0, 0, prompt[..4])]), cache).Dispose();
        model.Forward(new ForwardBatch([new SequenceStep(0, 4, prompt[4..8])]), cache).Dispose();
        var last = model.Forward(new ForwardBatch([new SequenceStep(0, 8, prompt[8..])]), cache);
        AssertClose(naive.Logits(prompt)[-1], last[0]);
    }

    [Fact]
    public void Forward_steps_leave_no_live_tensors_behind()
    {
        string dir = TinyModels.Directory(TinyModels.Llama);
        using var model = LlamaModel.Load(dir, ScalarType.Float32, CPU);
        using var cache = new KvCache(model.Config, 2, 64, ScalarType.Float32, CPU);
        void Step(int i) { using var l = model.Forward(new ForwardBatch([new SequenceStep(0, i % 32, [i % 200]), new SequenceStep(1, 0, [1, 2, 3])]), cache); }
        for (int i = 0; i < 5; i++) Step(i);
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 200; i++) Step(i);
        Assert.Equal(before, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    [Fact]
    public void Rope_scaling_of_unknown_type_is_rejected_not_ignored()
    {
        var json = TinyModels.Llama.ToJson();
        json["rope_scaling"] = new System.Text.Json.Nodes.JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 };
        var e = Assert.Throws<InvalidDataException>(() => ModelConfig.Parse(json));
        Assert.Contains("yarn", e.Message);
    }
}
