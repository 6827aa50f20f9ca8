using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// Where the tokens of S'MoRE trees went: per sub-layer l, the selected expert of every routed path and its gate
/// weight. Paths are numbered row-major over the fan-outs from the top sub-layer down, so path <c>p</c> of sub-layer l
/// is child <c>p mod f_l</c> of path <c>p / f_l</c> of sub-layer l + 1. The leading dimensions are the tokens':
/// <c>[N]</c> for one module (<see cref="SmoreTree.Forward"/>), <c>[G, M]</c> for G trees of M rows each.
/// </summary>
/// <param name="Ids">Per sub-layer <c>[..., P_l]</c> int64 expert indices in <c>[0, s_l)</c>, P_l = Π_{l' ≥ l} f_{l'}.</param>
/// <param name="Weights">Per sub-layer <c>[..., P_l]</c> float32 gate weights α.</param>
public sealed record SmoreRouting(Tensor[] Ids, Tensor[] Weights);

/// <summary>
/// The S'MoRE forward pass, fused (methods.md §4.3): routing top-down before any expert runs, then the experts
/// bottom-up, level by level. It runs G trees of one <see cref="SmoreSignature"/> at once over <c>[G, M]</c> rows (tree g
/// reads rows <c>[g, :]</c>, its weights are <c>[g, ...]</c> of <see cref="SmoreTensors"/>): G = 1 for one module, G = S
/// for the stacked slots of a step (<see cref="SmoreSlotStep"/>). Per sub-layer a fixed number of TorchSharp calls
/// whatever G, the number of experts, the fan-out or how the tokens route: ONE batched GEMM reads the token for the
/// router and for every expert of every sub-layer (<c>x @ Input</c>, <c>[G, M, d_down + Σ s_l·r_l]</c>), then per
/// sub-layer one batched GEMM for every expert's B, one gather of the selected paths, the parent's W term, σ, and one
/// batched GEMM that weighs and sums each parent's children. No loop over tokens, trees or experts, no host sync.
/// Everything runs in float32; callers cast the result to the activation dtype. Steps of few rows on the CPU run the
/// routing and the experts in one native call instead (<see cref="Apply"/>, <see cref="SmoreKernel"/>), between the
/// same two GEMMs and with the same results.
/// </summary>
public static class SmoreTree
{
    /// <summary>
    /// Up to this many rows (trees × tokens) a CPU step runs the native tree (<see cref="SmoreKernel"/>): one call
    /// instead of about 60, which decides few-token steps. The tensor form's batched GEMMs amortise their calls over
    /// more rows, where the native tree's row-by-row loops stop winning: for the bench's <c>smore-2x4</c> down module
    /// (2 sub-layers of 4 experts, top-2) 20 against 82 µs at 1 row, 119 against 182 at 16, 410 against 361 at 64.
    /// </summary>
    public const int MaxNativeRows = 32;

    /// <summary>
    /// The trees' deltas <c>[G, M, d_out]</c> and where the rows went (routing with leading shape <paramref name="rows"/>,
    /// <c>[G, M]</c> by default): routing top-down, the experts bottom-up and the final projection, in the tensor form
    /// or the native one (<paramref name="form"/>).
    /// </summary>
    /// <param name="projected"><see cref="Project"/> of the tokens, <c>[G, M, d_down + Σ s_l·r_l]</c>.</param>
    public static (Tensor Delta, SmoreRouting Routing) Apply(SmoreTensors tree, Tensor projected, MixtureForm form = MixtureForm.Auto, long[]? rows = null)
    {
        rows ??= [projected.size(0), projected.size(1)];
        if (NativeMixtures.Runs(form, projected, projected.size(0) * projected.size(1), MaxNativeRows))
        {
            var (below, kernelRouting) = SmoreKernel.Run(tree, projected, rows);                    // x_L [G, M, d_L]
            return (Final(tree, below), kernelRouting);
        }
        var routing = Route(tree, projected, rows);
        return (Evaluate(tree, projected, routing), routing);
    }

    /// <summary>Everything that reads the token, in one batched GEMM: <c>[G, M, d_down + Σ s_l·r_l]</c> (router input, then each sub-layer's <c>A_e x + a_e</c>).</summary>
    /// <param name="x">Tokens <c>[G, M, d_in]</c>, float32.</param>
    public static Tensor Project(SmoreTensors tree, Tensor x) => Linear(x, tree.Input, tree.InputBias);

    /// <summary>The tensor form's routing, top-down (l = L−1 … 0): each parent path's router picks its children; ids and weights <c>[..., P_l]</c>.</summary>
    /// <param name="projected"><see cref="Project"/> of the tokens, <c>[G, M, d_down + Σ s_l·r_l]</c>.</param>
    /// <param name="rows">The leading shape of the routing's tensors (the same G·M rows): <c>[G, M]</c>, or <c>[N]</c> for one module.</param>
    internal static SmoreRouting Route(SmoreTensors tree, Tensor projected, long[] rows)
    {
        var signature = tree.Signature;
        int levels = signature.Levels.Count;
        long g = projected.size(0), m = projected.size(1);
        var ids = new Tensor[levels];
        var weights = new Tensor[levels];

        var gateInput = projected.narrow(2, 0, signature.DownDim);                                  // [G, M·P, width]: one root path per row
        long paths = 1;
        for (int l = levels - 1; l >= 0; l--)
        {
            var level = tree.Levels[l];
            var shape = signature.Levels[l];
            int f = shape.FanOut;
            var hidden = Activate(Linear(gateInput, level.GateIn, level.GateInBias), signature.GateActivation, level.GateSlope); // [G, M·P, d_g]
            var query = Linear(hidden, level.GateOut, level.GateOutBias);                           // [G, M·P, d_g]
            var keys = level.Keys.transpose(1, 2);                                                  // [G, d_g, s]
            Tensor id, weight;
            switch (signature.GateType)
            {
                case SmoreGateType.Switch:
                {
                    var probs = query.bmm(keys).softmax(-1);                                        // [G, M·P, s]
                    (weight, id) = probs.topk(f, -1);                                               // [G, M·P, f]
                    if (f > 1) weight = weight.div(weight.sum(-1, keepdim: true));                  // renormalised
                    break;
                }
                case SmoreGateType.NoisyTopK:
                {
                    var cosine = normalize(query, 2.0, -1, 1e-12).bmm(keys);                        // [G, M·P, s], keys already unit rows
                    (var top, id) = cosine.topk(f, -1);                                             // [G, M·P, f]
                    weight = f > 1 ? top.softmax(-1) : top;                                         // f = 1: the raw cosine logit
                    break;
                }
                default:
                {
                    weight = query.bmm(keys).softmax(-1);                                           // [G, M·P, s]
                    id = level.AllIds!.expand(g, m * paths, shape.Experts);                         // [G, M·P, s]: every expert
                    break;
                }
            }
            ids[l] = id.reshape([.. rows, paths * f]);                                              // [..., P·f]
            weights[l] = weight.reshape([.. rows, paths * f]);                                      // [..., P·f]
            if (l > 0)
            {
                // Children's routers see the token and the keys of their selected ancestors, top-down.
                long width = gateInput.size(2), children = m * paths * f;
                var selected = level.Keys.gather(1, id.reshape(g, children, 1).expand(g, children, shape.GateDim)); // [G, M·P·f, d_g]
                var parent = gateInput.unsqueeze(2).expand(g, m * paths, f, width).reshape(g, children, width);   // [G, M·P·f, width]
                gateInput = cat([parent, selected], -1);                                            // [G, M·P·f, width + d_g]
            }
            paths *= f;
        }
        return new SmoreRouting(ids, weights);
    }

    /// <summary>The tensor form's experts, bottom-up (l = 0 … L−1), along <paramref name="routing"/>; returns the trees' deltas <c>[G, M, d_out]</c>.</summary>
    /// <param name="projected"><see cref="Project"/> of the tokens, <c>[G, M, ·]</c> (every sub-layer's experts read the original token).</param>
    internal static Tensor Evaluate(SmoreTensors tree, Tensor projected, SmoreRouting routing)
    {
        var signature = tree.Signature;
        var position = signature.Position;
        long g = projected.size(0), m = projected.size(1);
        Tensor? below = null;                                                                       // x_l per path of sub-layer l: [G, M·P_l, d_l]
        for (int l = 0; l < signature.Levels.Count; l++)
        {
            var level = tree.Levels[l];
            var shape = signature.Levels[l];
            var ids = routing.Ids[l];                                                               // [..., P_l]
            long paths = ids.size(-1), parents = paths / shape.FanOut;
            int s = shape.Experts, r = shape.Rank, dIn = signature.HiddenDim(l), dOut = signature.HiddenDim(l + 1);

            // Every expert of the sub-layer at once: u_e = sc·(B_e(A_e x + a_e) + b_e), sc folded into B and b at load.
            var down = projected.narrow(2, signature.InputOffset(l), s * r).reshape(g, m, s, r).transpose(1, 2);  // [G, s, M, r]
            var all = TorchScalars.Add(down.matmul(level.B), level.BBias).transpose(1, 2);          // [G, M, s, d_{l+1}]
            var selected = all.gather(2, ids.unsqueeze(-1).expand(g, m, paths, dOut));              // [G, M, P_l, d_{l+1}]

            Tensor perChild;                                                                        // weighted by α below
            Tensor? unweighted = null;                                                              // "child": the W term is not weighted
            if (below is null)
                perChild = position == SmoreActivationPosition.All ? Activate(selected, signature.ExpertActivation, level.Slope) : selected;
            else
            {
                var child = position == SmoreActivationPosition.All ? below : Activate(below, signature.ExpertActivation, level.Slope);
                var fromChildren = Linear(child, level.W!, level.WBias!).view(g, m, paths, dOut);  // [G, M, P_l, d_{l+1}]
                if (position == SmoreActivationPosition.Child)
                {
                    perChild = selected;
                    unweighted = fromChildren;
                }
                else
                {
                    perChild = TorchScalars.Add(selected, fromChildren);                            // [G, M, P_l, d_{l+1}]
                    if (position == SmoreActivationPosition.All) perChild = Activate(perChild, signature.ExpertActivation, level.Slope);
                }
            }

            // Each parent: Σ over its f children of α · perChild, as one batched GEMM [1, f] @ [f, d_{l+1}].
            long parentRows = g * m * parents;
            var alpha = routing.Weights[l].reshape(parentRows, 1, shape.FanOut);                   // [G·M·P_{l+1}, 1, f]
            var next = alpha.bmm(perChild.reshape(parentRows, shape.FanOut, dOut)).view(g, m * parents, dOut); // [G, M·P_{l+1}, d_{l+1}]
            if (unweighted is not null) next = TorchScalars.Add(next, unweighted.reshape(g, m * parents, shape.FanOut, dOut).sum(2));
            below = next;
        }
        return Final(tree, below!);                                                                 // [G, M, d_out] (P_L = 1)
    }

    /// <summary>The final projection of x_L <c>[G, M, d_L]</c>: <c>W_final x_L + b_final</c>, <c>[G, M, d_out]</c>.</summary>
    private static Tensor Final(SmoreTensors tree, Tensor below) => Linear(below, tree.Final, tree.FinalBias);

    /// <summary>One module over its tokens: the delta <c>[N, d_out]</c> in float32, and where the tokens went (<c>[N, P_l]</c>).</summary>
    /// <param name="x">Tokens <c>[N, d_in]</c>.</param>
    public static (Tensor Delta, SmoreRouting Routing) Forward(SmoreModule module, Tensor x, MixtureForm form = MixtureForm.Auto)
    {
        var x32 = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);                     // [N, d_in]
        var projected = Project(module.Tree, x32.unsqueeze(0));                                     // [1, N, d_down + Σ s·r]
        var (delta, routing) = Apply(module.Tree, projected, form, [x.size(0)]);
        return (delta.view(x.size(0), module.OutFeatures), routing);
    }

    /// <summary>
    /// Every selection of every sub-layer as its accounting label <c>l&lt;level&gt;.&lt;index&gt;</c> (index into
    /// <see cref="SmoreDescription.ExpertLabels"/>, leaf level first): <c>[..., Σ_l P_l]</c>, the routing's leading shape.
    /// </summary>
    public static Tensor Labelled(SmoreTensors tree, SmoreRouting routing)
    {
        var labelled = new Tensor[routing.Ids.Length];
        for (int l = 0; l < labelled.Length; l++)
            labelled[l] = l == 0 ? routing.Ids[0] : tree.Levels[l].Labels.index_select(0, routing.Ids[l].flatten()).view_as(routing.Ids[l]); // [..., P_l]
        return labelled.Length == 1 ? labelled[0] : cat(labelled, -1);                             // [..., Σ P_l]
    }

    /// <summary>
    /// Counts the step's selections of one module on the device (no host sync): every (token, path) selection of every
    /// sub-layer under its label (<see cref="Labelled"/>). An expert reached through several parent paths of one token
    /// counts once per path, as the official code's load does.
    /// </summary>
    public static void Record(ExpertStepTally tally, ExpertSite site, SmoreModule module, SmoreRouting routing) =>
        tally.RecordTopK(site, Labelled(module.Tree, routing));                                     // [N, Σ P_l]

    /// <summary><c>x @ weight + bias</c> per tree: x <c>[G, M, in]</c>, weight <c>[G, in, out]</c>, bias <c>[G, 1, out]</c> → <c>[G, M, out]</c>, one call.</summary>
    private static Tensor Linear(Tensor x, Tensor weight, Tensor bias) => x.baddbmm(weight, bias);

    /// <summary>σ on <c>[G, ...]</c>; a PReLU has one slope per tree (<c>[G]</c>), PReLU's channel dimension being dim 1.</summary>
    private static Tensor Activate(Tensor t, SmoreActivation activation, Tensor? slope) => activation switch
    {
        SmoreActivation.Identity => t,
        SmoreActivation.Tanh => t.tanh(),
        SmoreActivation.Relu => relu(t),
        _ => slope!.size(0) == 1 ? prelu(t, slope) : prelu(t.transpose(0, 1), slope).transpose(0, 1),
    };
}
