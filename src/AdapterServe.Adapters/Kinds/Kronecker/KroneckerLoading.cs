using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// Builds the served <see cref="KroneckerWeights"/> of one validated module from its stored tensors: LoKr's low-rank
/// factors are multiplied out (<c>w1 = lokr_w1_a·lokr_w1_b</c>, small) and alpha/r is folded into w1; MoKA's gate is
/// turned into <c>softmax(g)·scaling</c> once and folded into each <c>moka_A.{i}</c>. The delta itself is never built.
/// </summary>
public static class KroneckerLoading
{
    /// <param name="tensor">The stored tensor under a full key, or null when absent; only read.</param>
    public static KroneckerWeights LoadModule(bool moka, KroneckerModuleSpec spec, Func<string, Tensor?> tensor, Device device, ScalarType dtype)
    {
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        string prefix = spec.TensorPrefix;

        Tensor Read(string part, long[]? shape = null)
        {
            string key = $"{prefix}.{part}";
            var t = tensor(key) ?? throw new AdapterValidationException($"{KroneckerValidator.WeightsFileName}: tensor '{key}' is missing", "missing_tensor");
            if (shape is not null && !t.shape.SequenceEqual(shape))
                throw new AdapterValidationException(
                    $"{KroneckerValidator.WeightsFileName}: tensor '{key}' has shape [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}]", "shape_mismatch");
            return t.to(ScalarType.Float32);
        }

        Tensor Factor(string name, int? rank, long rows, long cols) =>
            rank is null ? Read(name, [rows, cols])                                                         // [rows, cols]
                : Read(name + "_a", [rows, rank.Value]).matmul(Read(name + "_b", [rank.Value, cols]));       // [rows, r] @ [r, cols]

        List<(Tensor A, Tensor B, double Coefficient)> components;
        if (!moka)
        {
            var s = spec.Components.Single();
            var w1 = Factor("lokr_w1", spec.W1Rank, s.Ma, s.Na);                                            // [out_l, in_m]
            var w2 = Factor("lokr_w2", spec.W2Rank, s.Mb, s.Nb);                                            // [out_k, in_n]
            components = [(w1, w2, spec.Scaling)];
        }
        else
        {
            int count = spec.Components.Count;
            var gate = Read("moka_gate", [count]).to(ScalarType.Float64).data<double>().ToArray();         // [R] logits, on the host once
            var weights = Softmax(gate);
            components = [.. spec.Components.Select((c, i) =>
                (Read($"moka_A.{i}", [c.Ma, c.Na]), Read($"moka_B.{i}", [c.Mb, c.Nb]), weights[i] * spec.Scaling))];
        }
        return KroneckerWeights.Build(spec.Layer, spec.Projection, components, device, dtype);
    }

    /// <summary>softmax in float64, max-shifted.</summary>
    public static double[] Softmax(IReadOnlyList<double> logits)
    {
        double max = logits.Max();
        var e = logits.Select(g => Math.Exp(g - max)).ToArray();
        double sum = e.Sum();
        return [.. e.Select(v => v / sum)];
    }
}
