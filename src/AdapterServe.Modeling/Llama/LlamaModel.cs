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

/// <summary>
/// Several frozen projections of the same input stored as one weight, rows stacked in order (q|k|v, gate|up): one GEMM
/// instead of several. Each projection's weight is a row block of the fused one (a contiguous view). The adapter hook
/// gets the siblings together (<see cref="IProjectionHook.ApplySiblings"/>), each on its column block of the fused output
/// (updated in place).
/// </summary>
public sealed class FusedLinear
{
    private readonly int _layer;
    private readonly (Projection Projection, long Offset, long Size)[] _parts;
    private readonly Projection[] _projections;

    /// <param name="weights">Each projection's <c>W0: [d_out_i, d_in]</c> and optional bias, in output order; copied into the fused weight.</param>
    public FusedLinear(int layer, IReadOnlyList<(Projection Projection, Tensor Weight, Tensor? Bias)> weights)
    {
        _layer = layer;
        Weight = cat(weights.Select(w => w.Weight).ToList(), 0);                                 // [Σ d_out_i, d_in]
        bool anyBias = weights.Any(w => w.Bias is not null);
        Bias = anyBias ? cat(weights.Select(w => w.Bias ?? zeros(w.Weight.size(0), w.Weight.dtype, w.Weight.device)).ToList(), 0) : null;
        _parts = new (Projection, long, long)[weights.Count];
        long offset = 0;
        for (int i = 0; i < weights.Count; i++)
        {
            long size = weights[i].Weight.size(0);
            _parts[i] = (weights[i].Projection, offset, size);
            offset += size;
        }
        _projections = [.. _parts.Select(p => p.Projection)];
    }

    public Tensor Weight { get; }
    public Tensor? Bias { get; }

    /// <summary>The row block of <paramref name="projection"/>: its own <c>W0: [d_out, d_in]</c> (a view).</summary>
    public Tensor WeightOf(Projection projection)
    {
        var part = _parts.Single(p => p.Projection == projection);
        return Weight.narrow(0, part.Offset, part.Size);
    }

    /// <summary>Output column block of <paramref name="projection"/> in <paramref name="fused"/> <c>[N, Σ d_out_i]</c>.</summary>
    public Tensor Slice(Tensor fused, Projection projection)
    {
        var part = _parts.Single(p => p.Projection == projection);
        return fused.narrow(1, part.Offset, part.Size);
    }

    /// <returns><c>[N, Σ d_out_i]</c>: every projection's output side by side, each adapted by the hook.</returns>
    public Tensor Forward(Tensor x, IProjectionHook? hook)
    {
        var y = F.linear(x, Weight);                                                             // [N, Σ d_out_i]
        if (hook is not null)
        {
            var blocks = new Tensor[_parts.Length];
            var weights = new Tensor[_parts.Length];
            for (int i = 0; i < _parts.Length; i++)
            {
                blocks[i] = y.narrow(1, _parts[i].Offset, _parts[i].Size);                      // [N, d_out_i], a view into y
                weights[i] = Weight.narrow(0, _parts[i].Offset, _parts[i].Size);                 // [d_out_i, d_in]
            }
            hook.ApplySiblings(_layer, _projections, x, blocks, weights);
        }
        return Bias is null ? y : TorchScalars.AddInPlace(y, Bias);
    }
}

/// <summary><c>model.layers.{i}.self_attn</c>: grouped-query attention with rotary embeddings; q|k|v fused.</summary>
public sealed class LlamaAttention(FusedLinear qkvProj, Linear oProj)
{
    public FusedLinear QkvProj { get; } = qkvProj;
    public Linear OProj { get; } = oProj;
}

/// <summary><c>model.layers.{i}.mlp</c>: SwiGLU, <c>down(silu(gate(x)) · up(x))</c>; gate|up fused.</summary>
public sealed class LlamaMlp(FusedLinear gateUpProj, Linear downProj)
{
    public FusedLinear GateUpProj { get; } = gateUpProj;
    public Linear DownProj { get; } = downProj;

    public Tensor Forward(Tensor x, IProjectionHook? hook)
    {
        using var scope = NewDisposeScope();
        var gateUp = GateUpProj.Forward(x, hook);                                                // [N, 2·intermediate]
        var h = F.silu(GateUpProj.Slice(gateUp, Projection.Gate)).mul_(GateUpProj.Slice(gateUp, Projection.Up));   // [N, intermediate]
        return DownProj.Forward(h, hook).MoveToOuterDisposeScope();
    }
}

/// <summary>One projection's frozen weight <c>W0: [d_out, d_in]</c>.</summary>
public sealed record ProjectionWeights(Tensor Weight);

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

        int h = config.HiddenSize, qOut = config.NumAttentionHeads * config.HeadDim;
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
            (Projection, Tensor, Tensor?) Part(Projection proj, long outDim, long inDim, bool bias)
            {
                string name = ProjectionNames.ModulePath(i, proj);
                var b = bias || has(name + ".bias") ? load(name + ".bias", [outDim]) : null;
                return (proj, load(name + ".weight", [outDim, inDim]), b);
            }
            FusedLinear Fused(params (Projection, Tensor Weight, Tensor? Bias)[] parts)
            {
                var fused = new FusedLinear(i, parts);
                foreach (var part in parts) { part.Weight.Dispose(); part.Bias?.Dispose(); }
                _owned.Add(fused.Weight);
                if (fused.Bias is not null) _owned.Add(fused.Bias);
                return fused;
            }
            // The sibling sets (q|k|v, gate|up) the adapter hook gets together: one fused weight each.
            FusedLinear Siblings(Projection[] set, bool bias) =>
                Fused([.. set.Select(p => Part(p, config.ProjectionShape(p).Out, config.ProjectionShape(p).In, bias))]);
            var attn = new LlamaAttention(Siblings(ProjectionNames.Siblings[0], ab), Proj(Projection.O, h, qOut, false));
            var mlp = new LlamaMlp(Siblings(ProjectionNames.Siblings[1], false), Proj(Projection.Down, h, config.IntermediateSize, false));
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
    /// <param name="layers">Run only the first N layers (the bench's step profile); null = all.</param>
    public Tensor Forward(ForwardBatch batch, KvCache cache, IProjectionHook? hook = null, int? layers = null)
    {
        using var scope = NewDisposeScope();
        var layout = AttentionLayout.Build(batch, cache, Config.NumAttentionHeads / Config.NumKeyValueHeads, Device);
        var rope = Rotary.At(layout.Positions);                                  // cos, signed sin [N, 1, D]: once per step
        var hidden = EmbedTokens.index_select(0, layout.TokenIds);              // [N, hidden], a fresh tensor: updated in place
        for (int l = 0; l < (layers ?? Layers.Count); l++)
        {
            var layer = Layers[l];
            TorchScalars.AddInPlace(hidden, Attention(l, layer.SelfAttn, layer.InputLayernorm.Forward(hidden), layout, rope, cache, hook));
            TorchScalars.AddInPlace(hidden, layer.Mlp.Forward(layer.PostAttentionLayernorm.Forward(hidden), hook));
        }
        var rows = Norm.Forward(layout.LogitRows is { } r ? hidden.index_select(0, r) : hidden);   // [rows, hidden]
        var logits = F.linear(rows, LmHead);                                                      // [rows, vocab]
        return (logits.dtype == ScalarType.Float32 ? logits : logits.to_type(ScalarType.Float32)).MoveToOuterDisposeScope();
    }

    private Tensor Attention(int l, LlamaAttention attn, Tensor x, AttentionLayout layout, RotaryEmbedding.Angles rope, KvCache cache, IProjectionHook? hook)
    {
        int heads = Config.NumAttentionHeads, kvHeads = Config.NumKeyValueHeads, d = Config.HeadDim, group = heads / kvHeads;
        long n = x.size(0);
        using var scope = NewDisposeScope();
        var qkv = attn.QkvProj.Forward(x, hook);                                                  // [N, (H + 2·KVH)·D]
        var qk = Rotary.Apply(qkv.narrow(1, 0, (heads + kvHeads) * d).view(n, heads + kvHeads, d), rope);   // [N, H + KVH, D], rotated together
        var q = qk.narrow(1, 0, heads);                                                           // [N, H, D]
        var k = qk.narrow(1, heads, kvHeads);                                                     // [N, KVH, D]
        var v = qkv.narrow(1, (heads + kvHeads) * d, kvHeads * d).view(n, kvHeads, d);            // [N, KVH, D]

        var keys = cache.Keys(l);
        var values = cache.Values(l);
        keys.index_copy_(0, layout.CacheRows, k);
        values.index_copy_(0, layout.CacheRows, v);

        long b = layout.Batch, t = layout.MaxNewTokens, s = layout.MaxTotalLength;
        // Grouped-query attention without repeating K/V: the G = H/KVH query heads of each KV head are extra query rows,
        // queries [B, KVH, T·G, D] against keys/values [B, KVH, S, D] gathered from the slots.
        var kAll = keys.index_select(0, layout.KeyRows).view(b, s, kvHeads, d).permute(0, 2, 1, 3);   // [B, KVH, S, D]
        var vAll = values.index_select(0, layout.KeyRows).view(b, s, kvHeads, d).permute(0, 2, 1, 3);
        Tensor packed;                                                                            // [N, H·D]
        if (t == 1)
        {
            // Decode: one query per sequence, already in batch order; no padding.
            var o = ScaledDotProductAttention(q.reshape(b, kvHeads, group, d), kAll, vAll, layout.Mask);   // [B, KVH, G, D]
            packed = o.reshape(n, heads * d);
        }
        else
        {
            var qPad = layout.QueryRows is { } rows
                ? zeros([b * t, heads, d], q.dtype, q.device).index_copy_(0, rows, q)             // [B·T, H, D] padded
                : q;
            var q5 = qPad.view(b, t, kvHeads, group, d).permute(0, 2, 1, 3, 4).reshape(b, kvHeads, t * group, d);   // [B, KVH, T·G, D]
            var o = ScaledDotProductAttention(q5, kAll, vAll, layout.Mask);                       // [B, KVH, T·G, D]
            var padded = o.view(b, kvHeads, t, group, d).permute(0, 2, 1, 3, 4).reshape(b * t, heads * d);   // [B·T, H·D]
            packed = layout.QueryRows is { } r ? padded.index_select(0, r) : padded;
        }
        return attn.OProj.Forward(packed, hook).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The one place attention is computed. TorchSharp's causal flag is top-left aligned (wrong with a KV cache),
    /// so the mask is always explicit: <paramref name="mask"/> <c>[B, 1, T, S]</c> (true = attend) or null when every key is visible.
    /// </summary>
    public static Tensor ScaledDotProductAttention(Tensor q, Tensor k, Tensor v, Tensor? mask) =>
        F.scaled_dot_product_attention(q, k, v, mask);

    /// <summary>The frozen weight <c>W0: [d_out, d_in]</c> and bias of one projection (what adapters are validated and built against; views into fused weights).</summary>
    public ProjectionWeights ProjectionOf(int layer, Projection projection)
    {
        var l = Layers[layer];
        return projection switch
        {
            Projection.Q or Projection.K or Projection.V => new(l.SelfAttn.QkvProj.WeightOf(projection)),
            Projection.O => new(l.SelfAttn.OProj.Weight),
            Projection.Gate or Projection.Up => new(l.Mlp.GateUpProj.WeightOf(projection)),
            Projection.Down => new(l.Mlp.DownProj.Weight),
            _ => throw new ArgumentOutOfRangeException(nameof(projection)),
        };
    }

    /// <summary>The GEMMs of one step, in order: each layer's q|k|v, o, gate|up and down weights, then the LM head.</summary>
    public IEnumerable<Tensor> StepWeights()
    {
        foreach (var l in Layers)
        {
            yield return l.SelfAttn.QkvProj.Weight;
            yield return l.SelfAttn.OProj.Weight;
            yield return l.Mlp.GateUpProj.Weight;
            yield return l.Mlp.DownProj.Weight;
        }
        yield return LmHead;
    }

    public long ParameterBytes => _owned.Sum(t => t.NumberOfElements * t.ElementSize);

    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        Rotary.Dispose();
    }
}
