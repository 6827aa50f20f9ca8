using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace AdapterServe.Modeling.Llama;

/// <summary>One frozen linear projection (<c>W0: [d_out, d_in]</c>, optional bias) that routes through the adapter hook.</summary>
public sealed class Linear(Tensor weight, Tensor? bias, int layer, Projection projection)
{
    public Tensor Weight { get; } = weight;
    public Tensor? Bias { get; } = bias;

    public Tensor Forward(Tensor x, IProjectionHook? hook)
    {
        var y = F.linear(x, Weight);                                     // [N, d_out]
        if (hook is not null) y = hook.Apply(layer, projection, x, y, Weight);
        return Bias is null ? y : TorchScalars.AddInPlace(y, Bias);
    }
}

/// <summary><c>model.layers.{i}.self_attn</c>: grouped-query attention with rotary embeddings.</summary>
public sealed class LlamaAttention(Linear qProj, Linear kProj, Linear vProj, Linear oProj)
{
    public Linear QProj { get; } = qProj;
    public Linear KProj { get; } = kProj;
    public Linear VProj { get; } = vProj;
    public Linear OProj { get; } = oProj;
}

/// <summary><c>model.layers.{i}.mlp</c>: SwiGLU, <c>down(silu(gate(x)) · up(x))</c>.</summary>
public sealed class LlamaMlp(Linear gateProj, Linear upProj, Linear downProj)
{
    public Linear GateProj { get; } = gateProj;
    public Linear UpProj { get; } = upProj;
    public Linear DownProj { get; } = downProj;

    public Tensor Forward(Tensor x, IProjectionHook? hook)
    {
        using var scope = NewDisposeScope();
        var h = F.silu(GateProj.Forward(x, hook)) * UpProj.Forward(x, hook);   // [N, intermediate]
        return DownProj.Forward(h, hook).MoveToOuterDisposeScope();
    }
}

/// <summary><c>model.layers.{i}</c>.</summary>
public sealed class LlamaDecoderLayer(RmsNorm inputLayernorm, LlamaAttention selfAttn, RmsNorm postAttentionLayernorm, LlamaMlp mlp)
{
    public RmsNorm InputLayernorm { get; } = inputLayernorm;
    public LlamaAttention SelfAttn { get; } = selfAttn;
    public RmsNorm PostAttentionLayernorm { get; } = postAttentionLayernorm;
    public LlamaMlp Mlp { get; } = mlp;
}

/// <summary>
/// A Llama-family causal LM (Llama, Mistral, Qwen2) with frozen weights loaded from a Hugging Face directory.
/// <see cref="Forward"/> runs one packed step of many sequences (prefill chunks and decode tokens mixed),
/// reading and writing their keys/values in a <see cref="KvCache"/>.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    private readonly List<Tensor> _owned = [];

    public ModelConfig Config { get; }
    public ScalarType Dtype { get; }
    public Device Device { get; }
    public Tensor EmbedTokens { get; }                 // model.embed_tokens.weight [vocab, hidden]
    public IReadOnlyList<LlamaDecoderLayer> Layers { get; }
    public RmsNorm Norm { get; }                        // model.norm
    public Tensor LmHead { get; }                      // lm_head.weight, or embed_tokens when tied
    public RotaryEmbedding Rotary { get; }

    private LlamaModel(ModelConfig config, ScalarType dtype, Device device, Func<string, long[], Tensor> load, Func<string, bool> has, int maxPositions)
    {
        Config = config;
        Dtype = dtype;
        Device = device;
        Tensor Load(string name, params long[] shape) { var t = load(name, shape); _owned.Add(t); return t; }
        Tensor? LoadOptional(string name, params long[] shape) => has(name) ? Load(name, shape) : null;

        int h = config.HiddenSize, qOut = config.NumAttentionHeads * config.HeadDim, kvOut = config.NumKeyValueHeads * config.HeadDim;
        EmbedTokens = Load("model.embed_tokens.weight", config.VocabSize, h);
        var layers = new List<LlamaDecoderLayer>();
        for (int i = 0; i < config.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            Linear Proj(Projection proj, long outDim, long inDim, bool bias)
            {
                string name = ProjectionNames.ModulePath(i, proj);
                return new Linear(Load(name + ".weight", outDim, inDim), bias ? Load(name + ".bias", outDim) : LoadOptional(name + ".bias", outDim), i, proj);
            }
            bool ab = config.AttentionBias;
            var attn = new LlamaAttention(Proj(Projection.Q, qOut, h, ab), Proj(Projection.K, kvOut, h, ab), Proj(Projection.V, kvOut, h, ab), Proj(Projection.O, h, qOut, false));
            var mlp = new LlamaMlp(Proj(Projection.Gate, config.IntermediateSize, h, false), Proj(Projection.Up, config.IntermediateSize, h, false), Proj(Projection.Down, h, config.IntermediateSize, false));
            layers.Add(new LlamaDecoderLayer(
                new RmsNorm(Load(p + "input_layernorm.weight", h), config.RmsNormEps), attn,
                new RmsNorm(Load(p + "post_attention_layernorm.weight", h), config.RmsNormEps), mlp));
        }
        Layers = layers;
        Norm = new RmsNorm(Load("model.norm.weight", h), config.RmsNormEps);
        LmHead = config.TieWordEmbeddings || !has("lm_head.weight") ? EmbedTokens : Load("lm_head.weight", config.VocabSize, h);
        Rotary = new RotaryEmbedding(config, maxPositions, dtype, device);
    }

    /// <summary>Loads <c>config.json</c> and the safetensors weights of <paramref name="directory"/>, converted to <paramref name="dtype"/> on <paramref name="device"/>.</summary>
    public static LlamaModel Load(string directory, ScalarType dtype, Device device, int? maxPositions = null)
    {
        var config = ModelConfig.Load(Path.Combine(directory, "config.json"));
        using var checkpoint = SafetensorsCheckpoint.Open(directory);
        Tensor Read(string name, long[] shape)
        {
            if (!checkpoint.Contains(name)) throw new InvalidDataException($"{directory}: weight '{name}' is missing");
            var entry = checkpoint.Entry(name);
            if (!entry.Shape.SequenceEqual(shape))
                throw new InvalidDataException($"{directory}: weight '{name}' has shape [{string.Join(", ", entry.Shape)}], config.json implies [{string.Join(", ", shape)}]");
            return checkpoint.Read(name, dtype, device);
        }
        return new LlamaModel(config, dtype, device, Read, checkpoint.Contains, maxPositions ?? config.MaxPositionEmbeddings);
    }

    /// <summary>
    /// One packed step. Embeds the new tokens, runs every layer (writing their keys/values into their sequences'
    /// KV slots) and returns float32 logits <c>[rows, vocab]</c> for <see cref="ForwardBatch.LogitRows"/>.
    /// </summary>
    public Tensor Forward(ForwardBatch batch, KvCache cache, IProjectionHook? hook = null)
    {
        using var scope = NewDisposeScope();
        var layout = AttentionLayout.Build(batch, cache, Device);
        var hidden = EmbedTokens.index_select(0, layout.TokenIds);          // [N, hidden]
        for (int l = 0; l < Layers.Count; l++)
        {
            var layer = Layers[l];
            var attnOut = Attention(l, layer.SelfAttn, layer.InputLayernorm.Forward(hidden), layout, cache, hook);
            hidden = TorchScalars.Add(hidden, attnOut);
            hidden = TorchScalars.Add(hidden, layer.Mlp.Forward(layer.PostAttentionLayernorm.Forward(hidden), hook));
        }
        var rows = Norm.Forward(hidden.index_select(0, layout.LogitRows));  // [rows, hidden]
        return F.linear(rows, LmHead).to_type(ScalarType.Float32).MoveToOuterDisposeScope();   // [rows, vocab]
    }

    private Tensor Attention(int l, LlamaAttention attn, Tensor x, AttentionLayout layout, KvCache cache, IProjectionHook? hook)
    {
        int heads = Config.NumAttentionHeads, kvHeads = Config.NumKeyValueHeads, d = Config.HeadDim;
        long n = x.shape[0];
        var q = Rotary.Apply(attn.QProj.Forward(x, hook).view(n, heads, d), layout.Positions);     // [N, H, D]
        var k = Rotary.Apply(attn.KProj.Forward(x, hook).view(n, kvHeads, d), layout.Positions);   // [N, KVH, D]
        var v = attn.VProj.Forward(x, hook).view(n, kvHeads, d);                                   // [N, KVH, D]

        var keys = cache.Keys(l);
        var values = cache.Values(l);
        keys.index_copy_(0, layout.CacheRows, k);
        values.index_copy_(0, layout.CacheRows, v);

        long b = layout.Batch, t = layout.MaxNewTokens, s = layout.MaxTotalLength;
        // Padded per-sequence views: queries [B, H, T, D], keys/values [B, H, S, D] gathered from the slots.
        var qPad = zeros([b * t, heads, d], q.dtype, q.device).index_copy_(0, layout.QueryRows, q).view(b, t, heads, d).permute(0, 2, 1, 3);
        var kAll = keys.index_select(0, layout.KeyRows).view(b, s, kvHeads, d).permute(0, 2, 1, 3);
        var vAll = values.index_select(0, layout.KeyRows).view(b, s, kvHeads, d).permute(0, 2, 1, 3);
        if (heads != kvHeads)
        {
            kAll = kAll.repeat_interleave(heads / kvHeads, dim: 1);                                // [B, H, S, D]
            vAll = vAll.repeat_interleave(heads / kvHeads, dim: 1);
        }
        var o = ScaledDotProductAttention(qPad, kAll, vAll, layout.Mask);                          // [B, H, T, D]
        var packed = o.permute(0, 2, 1, 3).reshape(b * t, heads * d).index_select(0, layout.QueryRows);   // [N, H·D]
        return attn.OProj.Forward(packed, hook);
    }

    /// <summary>
    /// The one place attention is computed. TorchSharp's causal flag is top-left aligned (wrong with a KV cache),
    /// so the mask is always explicit: <paramref name="mask"/> <c>[B, 1, T, S]</c> (true = attend) or null when every key is visible.
    /// </summary>
    public static Tensor ScaledDotProductAttention(Tensor q, Tensor k, Tensor v, Tensor? mask) =>
        F.scaled_dot_product_attention(q, k, v, mask);

    /// <summary>The frozen projection of one layer (its weight is what adapters are validated and built against).</summary>
    public Linear ProjectionOf(int layer, Projection projection)
    {
        var l = Layers[layer];
        return projection switch
        {
            Projection.Q => l.SelfAttn.QProj, Projection.K => l.SelfAttn.KProj, Projection.V => l.SelfAttn.VProj, Projection.O => l.SelfAttn.OProj,
            Projection.Gate => l.Mlp.GateProj, Projection.Up => l.Mlp.UpProj, Projection.Down => l.Mlp.DownProj,
            _ => throw new ArgumentOutOfRangeException(nameof(projection)),
        };
    }

    public long ParameterBytes => _owned.Sum(t => t.NumberOfElements * t.ElementSize);

    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        Rotary.Dispose();
    }
}
