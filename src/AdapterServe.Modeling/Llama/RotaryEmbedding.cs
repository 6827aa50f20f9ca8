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
    private readonly Tensor _cos;   // [maxPositions, headDim]
    private readonly Tensor _sin;   // [maxPositions, headDim]

    public RotaryEmbedding(ModelConfig config, int maxPositions, ScalarType dtype, Device device)
    {
        double[] invFreq = InverseFrequencies(config);
        int half = invFreq.Length;
        var cos = new float[maxPositions * half * 2];
        var sin = new float[maxPositions * half * 2];
        for (int p = 0; p < maxPositions; p++)
            for (int i = 0; i < half; i++)
            {
                double angle = p * invFreq[i];
                float c = (float)Math.Cos(angle), s = (float)Math.Sin(angle);
                int row = p * half * 2;
                cos[row + i] = cos[row + half + i] = c;   // emb = cat(freqs, freqs)
                sin[row + i] = sin[row + half + i] = s;
            }
        _cos = tensor(cos, [maxPositions, half * 2]).to(dtype, device);
        _sin = tensor(sin, [maxPositions, half * 2]).to(dtype, device);
    }

    public int MaxPositions => (int)_cos.shape[0];

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

    /// <summary>Rotates <paramref name="x"/> <c>[N, heads, headDim]</c> by the angles of <paramref name="positions"/> <c>[N]</c>.</summary>
    public Tensor Apply(Tensor x, Tensor positions)
    {
        using var scope = NewDisposeScope();
        var cos = _cos.index_select(0, positions).unsqueeze(1);   // [N, 1, headDim]
        var sin = _sin.index_select(0, positions).unsqueeze(1);
        long half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = cat([x2.neg(), x1], -1);                   // rotate_half(x)
        return TorchScalars.Add(x * cos, rotated * sin).MoveToOuterDisposeScope();
    }

    public void Dispose() { _cos.Dispose(); _sin.Dispose(); }
}
