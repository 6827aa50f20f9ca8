using System.Diagnostics;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Llama;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace AdapterServe.Bench.Driving;

/// <param name="FloorMs">The step's GEMMs alone: the same weights and the same <c>linear</c> calls on a <c>[B, d_in]</c> input, nothing else.</param>
/// <param name="ForwardMs">One bare <see cref="LlamaModel.Forward"/> of B decode tokens (no engine, no sampling).</param>
/// <param name="TensorsPerStep">Managed tensors created by one forward: each is a native call returning a new tensor (in-place calls come on top).</param>
/// <param name="TensorsPerLayer">The same for one decoder layer (forward minus embedding, final norm and head, over layers).</param>
public sealed record StepSample(double FloorMs, double ForwardMs, long TensorsPerStep, double TensorsPerLayer);

/// <summary>
/// What a decode step costs beyond its matrix products, measured on a second copy of the model loaded through the real
/// loader in the bench's own thread (the engine is idle meanwhile): the floor every step must pay, the bare forward,
/// and how many tensors (native calls) the forward creates.
/// </summary>
public static class StepProfile
{
    public static StepSample Measure(LlamaModel model, int batch, int pastLength, int iterations)
    {
        using var inference = inference_mode();
        using var cache = new KvCache(model.Config, batch, pastLength + 2, model.Dtype, model.Device);
        var weights = model.StepWeights().ToList();
        using var scope = NewDisposeScope();
        var inputs = weights.Select(w => w.size(1)).Distinct().ToDictionary(d => d, d => randn([batch, d], model.Dtype, model.Device));
        var tokens = new ForwardBatch(Enumerable.Range(0, batch).Select(slot => new SequenceStep(slot, pastLength, [slot % model.Config.VocabSize])).ToList());

        double Time(Action step)
        {
            step();                                                                  // warm
            var runs = new List<double>(iterations);
            for (int i = 0; i < iterations; i++)
            {
                long start = Stopwatch.GetTimestamp();
                step();
                runs.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
            return Reporting.Stats.Median(runs);
        }

        double floor = Time(() =>
        {
            using var s = NewDisposeScope();
            foreach (var w in weights) F.linear(inputs[w.size(1)], w);
        });
        double forward = Time(() =>
        {
            using var s = NewDisposeScope();
            model.Forward(tokens, cache);
        });

        var stats = DisposeScopeManager.Statistics;
        long before = stats.CreatedInScopeCount + stats.CreatedOutsideScopeCount;
        using (NewDisposeScope()) model.Forward(tokens, cache);
        long perStep = stats.CreatedInScopeCount + stats.CreatedOutsideScopeCount - before;
        // Outside the layers: the step's index tensors, the embedding gather, rotary angles, final norm, head.
        long outside = MeasureLayerless(model, tokens, cache);
        return new StepSample(floor, forward, perStep, (double)(perStep - outside) / model.Config.NumHiddenLayers);
    }

    /// <summary>Tensors a forward creates besides its layers: the same forward with the layers' count subtracted is not available, so run a 0-layer view.</summary>
    private static long MeasureLayerless(LlamaModel model, ForwardBatch tokens, KvCache cache)
    {
        var stats = DisposeScopeManager.Statistics;
        long before = stats.CreatedInScopeCount + stats.CreatedOutsideScopeCount;
        using (NewDisposeScope()) model.Forward(tokens, cache, layers: 0);
        return stats.CreatedInScopeCount + stats.CreatedOutsideScopeCount - before;
    }

    /// <summary>Loads the engine's model a second time (same files, dtype and device) for <see cref="Measure"/>.</summary>
    public static LlamaModel LoadModel(string directory, string dtype, string device)
    {
        var d = GenerationEngine.ParseDevice(device);
        return LlamaModel.Load(directory, GenerationEngine.ParseDtype(dtype, d), d);
    }
}
