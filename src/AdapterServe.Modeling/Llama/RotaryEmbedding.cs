using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Modeling.Llama;

/// <summary>
/// Rotary position embeddings in the Hugging Face rotate-half layout: the first and second halves of each head
/// are the two coordinates of each rotated pair. cos/sin tables are precomputed for every position.
/// Supports <c>rope_scaling</c> of type <c>linear</c> and <c>llama3</c>.
/// </summary>
public sealed class RotaryEmbedding : IDisposable
{
    private readonly Tensor _cos;         // [maxPositions, headDim]
    private readonly Tensor _signedSin;   // [maxPositions, headDim]: −sin on the first half, +sin on the second
    private readonly Tensor _halfSwap;    // [headDim] int64: i + d/2 for the first half, i − d/2 for the second

    public RotaryEmbedding(ModelConfig config, int maxPositions, ScalarType dtype, Device device)
    {
        double[] invFreq = InverseFrequencies(config);
        int half = invFreq.Length;
        var cos = new float[maxPositions * half * 2];
        var signedSin = new float[maxPositions * half * 2];
        for (int p = 0; p < maxPositions; p++)
            for (int i = 0; i < half; i++)
            {
                double angle = p * invFreq[i];
                float c = (float)Math.Cos(angle), s = (float)Math.Sin(angle);
                int row = p * half * 2;
                cos[row + i] = cos[row + half + i] = c;   // emb = cat(freqs, freqs)
                signedSin[row + i] = -s;                   // rotate_half(x) = cat(−x2, x1) = sign ⊙ x[halfSwap]
                signedSin[row + half + i] = s;
            }
        _cos = tensor(cos, [maxPositions, half * 2]).to(dtype, device);
        _signedSin = tensor(signedSin, [maxPositions, half * 2]).to(dtype, device);
        _halfSwap = tensor(Enumerable.Range(0, half * 2).Select(i => (long)(i < half ? i + half : i - half)).ToArray(), device: device);
    }

    public int MaxPositions => (int)_cos.size(0);

    /// <summary>The inverse frequencies θ_i = base^(−2i/d), rescaled as <c>rope_scaling</c> says.</summary>
    public static double[] InverseFrequencies(ModelConfig config)
    {
        int half = config.HeadDim / 2;
        var inv = new double[half];
        for (int i = 0; i < half; i++) inv[i] = 1.0 / Math.Pow(config.RopeTheta, 2.0 * i / config.HeadDim);
        switch (config.RopeScaling)
        {
            case null: break;
            case { Type: "linear" } r:
                for (int i = 0; i < half; i++) inv[i] /= r.Factor;
                break;
            case { Type: "llama3" } r:
                double lowWavelen = r.OriginalMaxPositionEmbeddings / r.LowFreqFactor;
                double highWavelen = r.OriginalMaxPositionEmbeddings / r.HighFreqFactor;
                for (int i = 0; i < half; i++)
                {
                    double wavelen = 2 * Math.PI / inv[i];
                    if (wavelen > lowWavelen) inv[i] /= r.Factor;
                    else if (wavelen >= highWavelen)
                    {
                        double smooth = (r.OriginalMaxPositionEmbeddings / wavelen - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor);
                        inv[i] = (1 - smooth) * inv[i] / r.Factor + smooth * inv[i];
                    }
                }
                break;
            default: throw new NotSupportedException($"rope_scaling type '{config.RopeScaling.Type}'");
        }
        return inv;
    }

    /// <summary>The rotation angles of one step's positions, shared by every layer.</summary>
    /// <param name="Cos"><c>[N, 1, headDim]</c></param>
    /// <param name="SignedSin"><c>[N, 1, headDim]</c>, −sin on the first half of each head, +sin on the second.</param>
    public sealed record Angles(Tensor Cos, Tensor SignedSin);

    /// <summary>The angles of <paramref name="positions"/> <c>[N]</c> (gathered once per step).</summary>
    public Angles At(Tensor positions) =>
        new(_cos.index_select(0, positions).unsqueeze(1), _signedSin.index_select(0, positions).unsqueeze(1));

    /// <summary>
    /// Rotates <paramref name="x"/> <c>[N, heads, headDim]</c>: <c>x·cos + rotate_half(x)·sin</c>, with
    /// <c>rotate_half(x)·sin = x[halfSwap] · signedSin</c> (bit for bit the same products) — four native calls.
    /// </summary>
    public Tensor Apply(Tensor x, Angles angles)
    {
        using var scope = NewDisposeScope();
        var rotated = x.index_select(-1, _halfSwap).mul_(angles.SignedSin);     // [N, heads, headDim] = rotate_half(x)·sin
        return TorchScalars.AddInPlace(x.mul(angles.Cos), rotated).MoveToOuterDisposeScope();
    }

    public void Dispose() { _cos.Dispose(); _signedSin.Dispose(); _halfSwap.Dispose(); }
}
