using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Modeling;

/// <summary>
/// An independent reference: recomputes the whole sequence from scratch, position by position, head by head,
/// with no KV cache, no batching and no scaled_dot_product_attention. Reads the weights itself.
/// </summary>
public sealed class NaiveLlama : IDisposable
{
    private readonly ModelConfig _c;
    private readonly Dictionary<string, Tensor> _w = new();

    public NaiveLlama(string directory)
    {
        _c = ModelConfig.Load(System.IO.Path.Combine(directory, "config.json"));
        using var file = SafetensorsFile.Open(System.IO.Path.Combine(directory, "model.safetensors"));
        foreach (var name in file.Tensors.Keys) _w[name] = file.Read(name, ScalarType.Float64);
    }

    private Tensor W(string name) => _w[name];
    private Tensor? Opt(string name) => _w.GetValueOrDefault(name);

    // Written without implicit Scalars (a + b, t * 2.0, pow(2)): TorchSharp may free those during the native call
    // (platform notes), which made this reference crash under the GC pressure of its own per-element loops.
    private Tensor RmsNorm(Tensor x, Tensor w) =>
        x.div(TorchScalars.Add(x.mul(x).mean([-1L], keepdim: true), tensor(_c.RmsNormEps, ScalarType.Float64)).sqrt()).mul(w);

    private Tensor Linear(Tensor x, string module, Func<string, Tensor, Tensor, Tensor>? adapter)
    {
        var y = x.matmul(W(module + ".weight").t());
        if (adapter is not null) y = adapter(module, x, y);
        return Opt(module + ".bias") is { } b ? TorchScalars.Add(y, b) : y;
    }

    /// <summary>Rotates one head vector at position p: pairs (i, i + d/2) by angle p·θ_i.</summary>
    private double[] Rope(double[] v, int p, double[] invFreq)
    {
        int half = _c.HeadDim / 2;
        var outv = (double[])v.Clone();
        for (int i = 0; i < half; i++)
        {
            double a = p * invFreq[i];
            double x1 = v[i], x2 = v[i + half];
            outv[i] = x1 * Math.Cos(a) - x2 * Math.Sin(a);
            outv[i + half] = x2 * Math.Cos(a) + x1 * Math.Sin(a);
        }
        return outv;
    }

    /// <summary>Logits (float64) of every position of <paramref name="tokens"/>: [T, vocab]. <paramref name="adapter"/> may change each projection's output (module, x, baseOut) → out.</summary>
    public Tensor Logits(IReadOnlyList<int> tokens, Func<string, Tensor, Tensor, Tensor>? adapter = null)
    {
        using var scope = NewDisposeScope();
        int T = tokens.Count, H = _c.NumAttentionHeads, KV = _c.NumKeyValueHeads, D = _c.HeadDim;
        double[] invFreq = AdapterServe.Modeling.Llama.RotaryEmbedding.InverseFrequencies(_c);
        var h = W("model.embed_tokens.weight").index_select(0, tensor(tokens.Select(t => (long)t).ToArray()));   // [T, hidden]
        for (int l = 0; l < _c.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            var x = RmsNorm(h, W(p + "input_layernorm.weight"));
            var q = Linear(x, p + "self_attn.q_proj", adapter).view(T, H, D);
            var k = Linear(x, p + "self_attn.k_proj", adapter).view(T, KV, D);
            var v = Linear(x, p + "self_attn.v_proj", adapter).view(T, KV, D);
            double[] qs = q.contiguous().data<double>().ToArray(), ks = k.contiguous().data<double>().ToArray(), vs = v.contiguous().data<double>().ToArray();
            double[] Row(double[] all, int t, int heads, int head) => all.AsSpan((t * heads + head) * D, D).ToArray();
            var attn = new double[T * H * D];                                        // [T, H·D]
            for (int head = 0; head < H; head++)
            {
                int kvHead = head / (H / KV);
                for (int i = 0; i < T; i++)
                {
                    var qi = Rope(Row(qs, i, H, head), i, invFreq);
                    var scores = new double[i + 1];
                    for (int j = 0; j <= i; j++)
                    {
                        var kj = Rope(Row(ks, j, KV, kvHead), j, invFreq);
                        double dot = 0;
                        for (int d = 0; d < D; d++) dot += qi[d] * kj[d];
                        scores[j] = dot / Math.Sqrt(D);
                    }
                    double max = scores.Max(), sum = scores.Sum(s => Math.Exp(s - max));
                    for (int j = 0; j <= i; j++)
                    {
                        double weight = Math.Exp(scores[j] - max) / sum;
                        for (int d = 0; d < D; d++) attn[(i * H + head) * D + d] += weight * vs[(j * KV + kvHead) * D + d];
                    }
                }
            }
            h = TorchScalars.Add(h, Linear(tensor(attn).view(T, H * D), p + "self_attn.o_proj", adapter));
            var m = RmsNorm(h, W(p + "post_attention_layernorm.weight"));
            var gate = Linear(m, p + "mlp.gate_proj", adapter);
            var up = Linear(m, p + "mlp.up_proj", adapter);
            h = TorchScalars.Add(h, Linear(gate.mul(sigmoid(gate)).mul(up), p + "mlp.down_proj", adapter));
        }
        var head_ = Opt("lm_head.weight") ?? W("model.embed_tokens.weight");
        return RmsNorm(h, W("model.norm.weight")).matmul(head_.t()).MoveToOuterDisposeScope();
    }

    public void Dispose() { foreach (var t in _w.Values) t.Dispose(); }
}
