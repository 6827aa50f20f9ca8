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
        bool float32 = x.dtype == ScalarType.Float32;                           // no no-op casts: each is a native call
        var x32 = float32 ? x : x.to_type(ScalarType.Float32);
        var variance = x32.mul(x32).mean([-1L], keepdim: true);                 // [N, 1]; x·x, not pow/square: no Scalar temporary
        var normed = x32.mul(TorchScalars.AddInPlace(variance, eps).rsqrt_());  // [N, hidden]
        if (!float32) normed = normed.to_type(x.dtype);
        return normed.mul_(Weight).MoveToOuterDisposeScope();
    }
}
