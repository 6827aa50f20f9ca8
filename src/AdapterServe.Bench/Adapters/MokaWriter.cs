using System.Text.Json.Nodes;
using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Bench.Adapters;

/// <summary>
/// Writes a MoKA directory (methods.md §3, the project's format) with random weights for any model size: every target
/// projection of every layer gets <c>components</c> Kronecker components <c>kron(A [f_out, D_in/f_in], B [D_out/f_out, f_in])</c>
/// with the small factors <c>f = factorization(d, 4)</c> (4 when it divides d), listed per projection in
/// <c>component_pattern</c> (layers of different shapes need their own lists), random gate logits, scaling 1.
/// Such a component costs <c>f·(d_in + d_out)</c> multiply-adds per token (rank up to 16 each), so four of them cost
/// what a rank-16 LoRA costs, and equal shapes are served as one stacked term. Each component's delta is about a
/// tenth of the input's size; the softmax gate averages them.
/// </summary>
public static class MokaWriter
{
    /// <summary>The factor <c>factorization</c> aims for on the small side of each component.</summary>
    public const int SmallFactor = 4;

    /// <summary><see cref="AdapterCase.Rank"/> is the number of components for MoKA cases.</summary>
    public static void Write(string directory, ModelConfig model, AdapterCase adapterCase, int seed) =>
        Write(directory, model, adapterCase.Rank, adapterCase.Targets, seed);

    public static void Write(string directory, ModelConfig model, int components, IReadOnlyList<Projection> targets, int seed)
    {
        if (components < 1) throw new ArgumentOutOfRangeException(nameof(components), components, "a MoKA module has at least one component");
        if (targets.Count == 0) throw new ArgumentException("a MoKA adapter needs at least one target projection", nameof(targets));
        var shapes = model with { HeadDim = model.HeadDim > 0 ? model.HeadDim : model.HiddenSize / model.NumAttentionHeads };
        Directory.CreateDirectory(directory);

        KroneckerShape ShapeOf(Projection p)
        {
            var (inDim, outDim) = shapes.ProjectionShape(p);
            var (outSmall, outLarge) = Split(outDim);
            var (inSmall, inLarge) = Split(inDim);
            return new KroneckerShape(outSmall, inLarge, outLarge, inSmall);
        }

        static (int Small, int Large) Split(int d)
        {
            var (m, n) = LokrFactorization.Factorize(d, SmallFactor);
            return (Math.Min(m, n), Math.Max(m, n));
        }

        var pattern = new JsonObject();
        foreach (var p in targets)
        {
            var s = ShapeOf(p);
            pattern[p.ShortName()] = new JsonArray(Enumerable.Range(0, components).Select(_ => (JsonNode)new JsonArray(s.Ma, s.Na, s.Mb, s.Nb)).ToArray());
        }
        var config = new JsonObject
        {
            ["peft_type"] = "MOKA",
            ["base_model_name_or_path"] = "adapterserve-bench-synthetic",
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode)t.ShortName()).ToArray()),
            ["component_pattern"] = pattern,
            ["scaling"] = 1.0,
        };
        File.WriteAllText(Path.Combine(directory, "adapter_config.json"), config.ToJsonString(ModelConfig.JsonWriteOptions));

        using var scope = NewDisposeScope();
        using var generator = new Generator((ulong)seed);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        Tensor Random(long[] shape, double std) => TorchScalars.Mul(randn(shape, generator: generator), std);
        for (int layer = 0; layer < model.NumHiddenLayers; layer++)
            foreach (var p in targets)
            {
                var s = ShapeOf(p);
                string prefix = "base_model.model." + ProjectionNames.ModulePath(layer, p);
                for (int i = 0; i < components; i++)
                {
                    tensors.Add(new($"{prefix}.moka_A.{i}", Random([s.Ma, s.Na], 1 / Math.Sqrt(s.Na))));       // [ma, na]
                    tensors.Add(new($"{prefix}.moka_B.{i}", Random([s.Mb, s.Nb], 0.1 / Math.Sqrt(s.Nb))));     // [mb, nb]
                }
                tensors.Add(new($"{prefix}.moka_gate", Random([components], 1.0)));                         // [R]
            }
        SafetensorsWriter.Write(Path.Combine(directory, "adapter_model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }
}
