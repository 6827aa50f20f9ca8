using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Modeling.Llama;

/// <summary><c>y = x / sqrt(mean(x²) + eps) · weight</c>, normalised in float32 as Hugging Face does.</summary>
public sealed class RmsNorm(Tensor weight, double eps)
{
    public Tensor Weight { get; } = weight;   // [hidden]

    public Tensor Forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var x32 = x.to_type(ScalarType.Float32);
        var variance = x32.pow(2).mean([-1L], keepdim: true);                  // [N, 1]
        var normed = (x32 * rsqrt(variance + eps)).to_type(x.dtype);
        return (normed * Weight).MoveToOuterDisposeScope();
    }
}
