using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// The served tensors of one sub-layer (level) of G S'MoRE trees of one <see cref="SmoreSignature"/>, each with a
/// leading tree dimension <c>[G, ...]</c>: G = 1 for one module (<see cref="SmoreModule"/>), G = slots for a slot stack,
/// G = S for the positions of a step. Precomputed at load for the fused forward: the scaling <c>sc_l</c> folded into B
/// and its bias, B laid out for one batched GEMM over experts, every other matrix stored as the right operand of a
/// batched GEMM (<c>[G, in, out]</c>), and the router's keys already normalised when the gate is cosine (noisy_topk).
/// </summary>
public sealed class SmoreLevel : IDisposable
{
    internal SmoreLevel(Tensor b, Tensor bBias, Tensor? w, Tensor? wBias, Tensor? slope,
        Tensor gateIn, Tensor gateInBias, Tensor? gateSlope, Tensor gateOut, Tensor gateOutBias, Tensor keys, Tensor labels, Tensor? allIds)
    {
        B = b; BBias = bBias; W = w; WBias = wBias; Slope = slope;
        GateIn = gateIn; GateInBias = gateInBias; GateSlope = gateSlope; GateOut = gateOut; GateOutBias = gateOutBias; Keys = keys;
        Labels = labels; AllIds = allIds;
    }

    /// <summary><c>sc_l · B_lᵀ</c> per expert: <c>[G, s, r, d_{l+1}]</c>.</summary>
    public Tensor B { get; }
    /// <summary><c>sc_l · b_l</c>: <c>[G, s, 1, d_{l+1}]</c>.</summary>
    public Tensor BBias { get; }
    /// <summary><c>W_lᵀ [G, d_l, d_{l+1}]</c> for l ≥ 1.</summary>
    public Tensor? W { get; }
    /// <summary><c>[G, 1, d_{l+1}]</c> for l ≥ 1.</summary>
    public Tensor? WBias { get; }
    /// <summary>PReLU slope of σ, one per tree: <c>[G]</c>.</summary>
    public Tensor? Slope { get; }
    /// <summary>Router <c>mlp.0</c>ᵀ: <c>[G, gate input, d_g]</c>.</summary>
    public Tensor GateIn { get; }
    /// <summary><c>[G, 1, d_g]</c>.</summary>
    public Tensor GateInBias { get; }
    /// <summary>Router PReLU slope (<c>mlp.1</c>), one per tree: <c>[G]</c>.</summary>
    public Tensor? GateSlope { get; }
    /// <summary>Router <c>mlp.2</c>ᵀ: <c>[G, d_g, d_g]</c>.</summary>
    public Tensor GateOut { get; }
    /// <summary><c>[G, 1, d_g]</c>.</summary>
    public Tensor GateOutBias { get; }
    /// <summary>Keys <c>[G, s, d_g]</c>, L2-normalised per row for the cosine (noisy_topk) gate: what children's routers see.</summary>
    public Tensor Keys { get; }
    /// <summary><c>[s]</c> int64, shared by the G trees: the accounting label of expert e of this sub-layer, Σ s_{l'} over the sub-layers below + e.</summary>
    public Tensor Labels { get; }
    /// <summary>Dense gate: <c>[s]</c> = 0 … s − 1 (int64), shared by the G trees: every expert selected.</summary>
    public Tensor? AllIds { get; }

    /// <summary>The tensors with a tree dimension, in a fixed order (null where the signature has none; equal signatures line up).</summary>
    internal IEnumerable<Tensor?> PerTree => [B, BBias, W, WBias, Slope, GateIn, GateInBias, GateSlope, GateOut, GateOutBias, Keys];

    internal IEnumerable<Tensor> All => PerTree.Append(Labels).Append(AllIds).OfType<Tensor>();

    /// <summary>A level of <paramref name="perTree"/>(t) for every tensor with a tree dimension and <paramref name="shared"/>(t) for the others.</summary>
    internal SmoreLevel Map(Func<Tensor, Tensor> perTree, Func<Tensor, Tensor> shared)
    {
        Tensor? P(Tensor? t) => t is null ? null : perTree(t);
        return new SmoreLevel(perTree(B), perTree(BBias), P(W), P(WBias), P(Slope), perTree(GateIn), perTree(GateInBias), P(GateSlope),
            perTree(GateOut), perTree(GateOutBias), perTree(Keys), shared(Labels), AllIds is null ? null : shared(AllIds));
    }

    public void Dispose()
    {
        foreach (var t in All) t.Dispose();
    }
}

/// <summary>
/// The served tensors of G S'MoRE trees of one <see cref="SmoreSignature"/>, each with a leading tree dimension (see
/// <see cref="SmoreLevel"/>): everything that reads the token stacked into ONE input projection (the router's
/// down-projection, then every sub-layer's experts' A, leaf first), one <see cref="SmoreLevel"/> per sub-layer
/// (0 = leaf) and the final projection. Float32 (routing and the tree run in float32) on one device. What
/// <see cref="SmoreTree"/> evaluates, for one module or for many stacked ones alike.
/// </summary>
public sealed class SmoreTensors : IDisposable
{
    internal SmoreTensors(SmoreSignature signature, Tensor input, Tensor inputBias, SmoreLevel[] levels, Tensor final, Tensor finalBias)
    {
        Signature = signature; Input = input; InputBias = inputBias; Levels = levels; Final = final; FinalBias = finalBias;
    }

    public SmoreSignature Signature { get; }
    /// <summary><c>[G, d_in, d_down + Σ s_l·r_l]</c>: <c>moe_downproj_x.weight</c>ᵀ, then every <c>moe_A.{l}</c>ᵀ (expert e owning r_l columns in order).</summary>
    public Tensor Input { get; }
    /// <summary><c>[G, 1, d_down + Σ s_l·r_l]</c>: the matching biases.</summary>
    public Tensor InputBias { get; }
    public IReadOnlyList<SmoreLevel> Levels { get; }
    /// <summary><c>W_finalᵀ [G, d_L, d_out]</c>.</summary>
    public Tensor Final { get; }
    /// <summary><c>[G, 1, d_out]</c>.</summary>
    public Tensor FinalBias { get; }
    /// <summary>G.</summary>
    public long Trees => Input.size(0);

    /// <summary>The tensors with a tree dimension, in a fixed order (equal signatures line up, nulls included).</summary>
    internal IEnumerable<Tensor?> PerTree => new Tensor?[] { Input, InputBias, Final, FinalBias }.Concat(Levels.SelectMany(l => l.PerTree));

    internal IEnumerable<Tensor> All => new[] { Input, InputBias, Final, FinalBias }.Concat(Levels.SelectMany(l => l.All));

    /// <summary>Trees of <paramref name="perTree"/>(t) for every tensor with a tree dimension and <paramref name="shared"/>(t) for the others.</summary>
    internal SmoreTensors Map(Func<Tensor, Tensor> perTree, Func<Tensor, Tensor> shared) =>
        new(Signature, perTree(Input), perTree(InputBias), [.. Levels.Select(l => l.Map(perTree, shared))], perTree(Final), perTree(FinalBias));

    /// <summary>
    /// <paramref name="trees"/> (of one signature) one after another along the tree dimension, in new storage: tree
    /// <c>Σ_{i&lt;j} G_i</c> onwards is <paramref name="trees"/>[j]'s; the shared tensors are copies of the first's.
    /// </summary>
    internal static SmoreTensors Concatenate(IReadOnlyList<SmoreTensors> trees)
    {
        var first = trees[0];
        if (trees.Any(t => !t.Signature.Equals(first.Signature)))
            throw new ArgumentException("only S'MoRE trees of one structure can be concatenated", nameof(trees));
        var perTree = trees.Select(t => t.PerTree.ToList()).ToList();
        var position = new Dictionary<Tensor, int>(ReferenceEqualityComparer.Instance);            // a tensor of the first tree → its place in PerTree
        foreach (var (t, i) in first.PerTree.Select((t, i) => (t, i)))
            if (t is not null) position[t] = i;
        return first.Map(t => cat(perTree.Select(tree => tree[position[t]]!).ToList(), 0).DetachFromDisposeScope(), t => t.clone().DetachFromDisposeScope());
    }

    public void Dispose()
    {
        foreach (var t in All) t.Dispose();
    }
}

/// <summary>
/// One S'MoRE-adapted projection of one layer, loaded: its tree's tensors (<see cref="SmoreTensors"/> with one tree,
/// owned by this object) and where it sits.
/// </summary>
public sealed class SmoreModule : IDisposable
{
    private SmoreModule(int layer, Projection projection, SmoreConfig config, SmoreTensors tree)
    {
        Layer = layer; Projection = projection; Config = config; Tree = tree;
        Bytes = tree.All.Sum(t => t.NumberOfElements * t.ElementSize);
    }

    public int Layer { get; }
    public Projection Projection { get; }
    public SmoreConfig Config { get; }
    /// <summary>The module's tensors, tree dimension 1.</summary>
    public SmoreTensors Tree { get; }
    public SmoreSignature Signature => Tree.Signature;
    public long Bytes { get; }
    public int InFeatures => Signature.InFeatures;
    public int OutFeatures => Signature.OutFeatures;

    /// <summary>
    /// Builds the served tensors of one module from the stored ones. <paramref name="stored"/> returns the tensor stored
    /// under a module-relative key (<c>moe_A.0</c>, …) or null; every shape is checked against <see cref="SmoreLayout"/>.
    /// </summary>
    /// <param name="describe">Names the module in errors, e.g. the full key prefix.</param>
    public static SmoreModule FromTensors(SmoreConfig config, int layer, Projection projection, int dIn, int dOut,
        Func<string, Tensor?> stored, Device device, string describe)
    {
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        var layout = SmoreLayout.Tensors(config, dIn, dOut).ToDictionary(t => t.Suffix);

        Tensor? ReadOptional(string suffix)
        {
            var spec = layout[suffix];
            if (stored(suffix) is not { } t) return null;
            if (!t.shape.SequenceEqual(spec.Shape))
                throw new AdapterValidationException(
                    $"{describe}: tensor '{describe}.{suffix}' has shape [{string.Join(", ", t.shape)}]; expected {spec.Why}", "shape_mismatch");
            return t.to(ScalarType.Float32, device, copy: true);
        }
        Tensor Read(string suffix) => ReadOptional(suffix)
            ?? throw new AdapterValidationException($"{describe}: tensor '{describe}.{suffix}' is missing (S'MoRE needs it: {layout[suffix].Why})", "missing_tensor");
        // One tree: a leading dimension of 1. Matrices [out, in] become the right operand of a batched GEMM, [1, in, out].
        static Tensor Right(Tensor weight) => weight.t().unsqueeze(0);                                  // [1, in, out]
        static Tensor Row(Tensor bias) => bias.view(1, 1, -1);                                          // [1, 1, out]

        var levels = new SmoreLevel[config.Levels];
        try
        {
            return Build();
        }
        catch
        {
            foreach (var level in levels) level?.Dispose();
            throw;
        }

        SmoreModule Build()
        {
            var signature = SmoreSignature.Of(config, dIn, dOut);
            var inputs = new List<Tensor> { Read("moe_downproj_x.weight") };                           // [d_down, d_in]
            var inputBiases = new List<Tensor> { Read("moe_downproj_x.bias") };                         // [d_down]
            long labels = 0;
            for (int l = 0; l < config.Levels; l++)
            {
                int s = config.NumExperts[l], r = config.ExpertDims[l];
                double sc = config.Scaling(l);
                inputs.Add(Read($"moe_A.{l}").reshape(s * r, dIn));                                     // [s·r, d_in]
                inputBiases.Add(Read($"moe_A_bias.{l}").reshape(s * r));                                // [s·r]
                var b = TorchScalars.Mul(Read($"moe_B.{l}").transpose(1, 2), sc).unsqueeze(0);          // [1, s, r, d_{l+1}] = sc·Bᵀ
                var bBias = TorchScalars.Mul(Read($"moe_B_bias.{l}"), sc).view(1, s, 1, -1);            // [1, s, 1, d_{l+1}]
                var w = l >= 1 ? Right(Read($"moe_W.{l}")) : null;                                      // [1, d_l, d_{l+1}]
                var wBias = l >= 1 ? Row(Read($"moe_W_bias.{l}")) : null;                               // [1, 1, d_{l+1}]
                var slope = config.ExpertActivation == SmoreActivation.Prelu ? Read($"moe_expert_act_param.{l}") : null; // [1]
                var gateIn = Right(Read($"moe_gate.{l}.mlp.0.weight"));                                 // [1, gate input, d_g]
                var gateInBias = Row(Read($"moe_gate.{l}.mlp.0.bias"));                                 // [1, 1, d_g]
                var gateSlope = config.GateActivation == SmoreActivation.Prelu ? Read($"moe_gate.{l}.mlp.1.weight") : null; // [1]
                var gateOut = Right(Read($"moe_gate.{l}.mlp.2.weight"));                                // [1, d_g, d_g]
                var gateOutBias = Row(Read($"moe_gate.{l}.mlp.2.bias"));                                // [1, 1, d_g]
                var keys = Read($"moe_gate.{l}.keys");                                                  // [s, d_g]
                if (config.GateType == SmoreGateType.NoisyTopK)
                {
                    _ = ReadOptional($"moe_gate.{l}.weight_noise.weight");                              // shape-checked, unused at inference
                    keys = nn.functional.normalize(keys, 2.0, -1, 1e-12);                               // [s, d_g], rows of norm 1
                }
                var allIds = config.GateType == SmoreGateType.Dense ? tensor(Enumerable.Range(0, s).Select(i => (long)i).ToArray(), device: device) : null; // [s]
                var labelIds = tensor(Enumerable.Range(0, s).Select(e => labels + e).ToArray(), device: device);       // [s]
                levels[l] = new SmoreLevel(Keep(b)!, Keep(bBias)!, Keep(w), Keep(wBias), Keep(slope),
                    Keep(gateIn)!, Keep(gateInBias)!, Keep(gateSlope), Keep(gateOut)!, Keep(gateOutBias)!, Keep(keys.unsqueeze(0))!, Keep(labelIds)!, Keep(allIds));
                labels += s;
            }
            var input = Right(cat(inputs.ToArray(), 0));                                                // [1, d_in, d_down + Σ s·r]
            var inputBias = Row(cat(inputBiases.ToArray(), 0));                                         // [1, 1, d_down + Σ s·r]
            var final = Right(Read("moe_W_final"));                                                     // [1, d_L, d_out]
            var finalBias = Row(Read("moe_W_final_bias"));                                              // [1, 1, d_out]
            return new SmoreModule(layer, projection, config, new SmoreTensors(signature, Keep(input)!, Keep(inputBias)!, levels, Keep(final)!, Keep(finalBias)!));
        }

        static Tensor? Keep(Tensor? t) => t?.contiguous().DetachFromDisposeScope();
    }

    /// <summary>This module over <paramref name="tree"/> (one tree of the same structure; the new module owns it).</summary>
    internal SmoreModule WithTree(SmoreTensors tree)
    {
        if (!tree.Signature.Equals(Signature) || tree.Trees != 1)
            throw new ArgumentException($"an S'MoRE module of {Signature} needs one tree of that structure", nameof(tree));
        return new SmoreModule(Layer, Projection, Config, tree);
    }

    /// <summary>A copy of this module on <paramref name="device"/>.</summary>
    public SmoreModule To(Device device)
    {
        using var inferenceOff = inference_mode(false);
        Tensor Copy(Tensor t) => t.to(t.dtype, device, copy: true).DetachFromDisposeScope();
        return new SmoreModule(Layer, Projection, Config, Tree.Map(Copy, Copy));
    }

    public void Dispose() => Tree.Dispose();
}
