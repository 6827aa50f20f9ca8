using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Modeling;

/// <summary>The seven adaptable linear projections of a Llama decoder layer, named like their Hugging Face weights.</summary>
public enum Projection { Q, K, V, O, Gate, Up, Down }

public static class ProjectionNames
{
    public static readonly Projection[] All = Enum.GetValues<Projection>();

    /// <summary>The projections of a layer that read the same input, each set run as one fused GEMM (q|k|v, gate|up), in output order.</summary>
    public static readonly IReadOnlyList<Projection[]> Siblings = [[Projection.Q, Projection.K, Projection.V], [Projection.Gate, Projection.Up]];

    /// <summary>Short Hugging Face name: q_proj, k_proj, ..., down_proj.</summary>
    public static string ShortName(this Projection p) => p switch
    {
        Projection.Q => "q_proj", Projection.K => "k_proj", Projection.V => "v_proj", Projection.O => "o_proj",
        Projection.Gate => "gate_proj", Projection.Up => "up_proj", Projection.Down => "down_proj",
        _ => throw new ArgumentOutOfRangeException(nameof(p)),
    };

    /// <summary>Full module path: model.layers.{i}.self_attn.q_proj or model.layers.{i}.mlp.gate_proj.</summary>
    public static string ModulePath(int layer, Projection p) =>
        p is Projection.Gate or Projection.Up or Projection.Down
            ? $"model.layers.{layer}.mlp.{p.ShortName()}"
            : $"model.layers.{layer}.self_attn.{p.ShortName()}";

    public static bool TryParseShortName(string name, out Projection p)
    {
        foreach (var candidate in All)
            if (candidate.ShortName() == name) { p = candidate; return true; }
        p = default;
        return false;
    }
}

/// <summary>
/// The one adapter hook of the forward pass. For each projection of each layer the model computes the frozen
/// base output <c>x @ W0ᵀ</c> for every token of the step and hands both to the hook, which returns the adapted
/// output (base output plus whatever each token's adapters contribute). The base bias, if any, is added after.
/// A hook instance describes one forward step: which adapter(s) apply to which of its tokens.
/// </summary>
public interface IProjectionHook
{
    /// <param name="layer">Decoder layer index.</param>
    /// <param name="projection">Which projection.</param>
    /// <param name="x">Input of the projection for every token of the step, <c>[N, d_in]</c>.</param>
    /// <param name="baseOutput"><c>x @ W0ᵀ</c> without bias, <c>[N, d_out]</c>.</param>
    /// <param name="baseWeight">The frozen base weight <c>W0: [d_out, d_in]</c> (read-only; for DoRA's norms).</param>
    /// <returns>The adapted output <c>[N, d_out]</c>; may be <paramref name="baseOutput"/> itself, updated in place (it is a fresh tensor of this step).</returns>
    Tensor Apply(int layer, Projection projection, Tensor x, Tensor baseOutput, Tensor baseWeight);

    /// <summary>
    /// Sibling projections of one layer that read the same input and run as one fused GEMM
    /// (<see cref="ProjectionNames.Siblings"/>: q|k|v, gate|up): adapts each projection's column block of the fused output
    /// in place. The default hands each block to <see cref="Apply"/>; a hook overrides it to share between the siblings
    /// what depends on x alone (vLLM's packed modules), with exactly the per-projection result.
    /// </summary>
    /// <param name="projections">The siblings, in output order.</param>
    /// <param name="x">Their common input, <c>[N, d_in]</c>.</param>
    /// <param name="baseOutputs">Per sibling <c>x @ W0ᵀ</c> without bias, <c>[N, d_out_i]</c>: views into the fused output, updated in place.</param>
    /// <param name="baseWeights">Per sibling <c>W0: [d_out_i, d_in]</c> (read-only).</param>
    void ApplySiblings(int layer, IReadOnlyList<Projection> projections, Tensor x, IReadOnlyList<Tensor> baseOutputs, IReadOnlyList<Tensor> baseWeights)
    {
        for (int i = 0; i < projections.Count; i++)
        {
            var adapted = Apply(layer, projections[i], x, baseOutputs[i], baseWeights[i]);
            if (!ReferenceEquals(adapted, baseOutputs[i])) baseOutputs[i].copy_(adapted);
        }
    }
}
