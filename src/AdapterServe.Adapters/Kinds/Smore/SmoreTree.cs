using AdapterServe.Adapters.Experts;
using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// Where the tokens of one S'MoRE module went: per sub-layer l, the selected expert of every routed path and its gate
/// weight. Paths are numbered row-major over the fan-outs from the top sub-layer down, so path <c>p</c> of sub-layer l
/// is child <c>p mod f_l</c> of path <c>p / f_l</c> of sub-layer l + 1.
/// </summary>
/// <param name="Ids">Per sub-layer <c>[N, P_l]</c> int64 expert indices in <c>[0, s_l)</c>, P_l = Π_{l' ≥ l} f_{l'}.</param>
/// <param name="Weights">Per sub-layer <c>[N, P_l]</c> float32 gate weights α.</param>
public sealed record SmoreRouting(Tensor[] Ids, Tensor[] Weights);

/// <summary>
/// The S'MoRE forward pass of one module over a batch of tokens, fused (methods.md §4.3): routing top-down before any
/// expert runs, then the experts bottom-up, level by level. Per sub-layer a fixed number of TorchSharp calls whatever
/// the number of experts, the fan-out or how the tokens route: ONE GEMM per module reads the token for the router and
/// for every expert of every sub-layer (<c>x @ Inputᵀ</c>, <c>[N, d_down + Σ s_l·r_l]</c>), then per sub-layer one
/// batched GEMM for every expert's B, one gather of the selected paths, the parent's W term,
/// σ, and one batched GEMM that weighs and sums each parent's children. No loop over tokens or experts, no host sync.
/// Everything runs in float32; callers cast the result to the activation dtype.
/// </summary>
public static class SmoreTree
{
    /// <summary>Everything that reads the token, in one GEMM: <c>[N, d_down + Σ s_l·r_l]</c> (router input, then each sub-layer's <c>A_e x + a_e</c>).</summary>
    /// <param name="x">Tokens <c>[N, d_in]</c>, float32.</param>
    public static Tensor Project(SmoreModule module, Tensor x) => linear(x, module.Input, module.InputBias);

    /// <summary>Routing, top-down (l = L−1 … 0): each parent path's router picks its children.</summary>
    /// <param name="projected"><see cref="Project"/> of the tokens, <c>[N, d_down + Σ s_l·r_l]</c>.</param>
    public static SmoreRouting Route(SmoreModule module, Tensor projected)
    {
        var config = module.Config;
        int levels = module.Levels.Count;
        long n = projected.size(0);
        var ids = new Tensor[levels];
        var weights = new Tensor[levels];

        var gateInput = projected.narrow(1, 0, module.DownDim).unsqueeze(1);                // [N, 1, d_down]: one root path
        long paths = 1;
        for (int l = levels - 1; l >= 0; l--)
        {
            var level = module.Levels[l];
            int f = level.FanOut;
            var hidden = Activate(linear(gateInput, level.GateIn, level.GateInBias), config.GateActivation, level.GateSlope); // [N, P, d_g]
            var query = linear(hidden, level.GateOut, level.GateOutBias);                   // [N, P, d_g]
            Tensor id, weight;
            switch (config.GateType)
            {
                case SmoreGateType.Switch:
                {
                    var probs = query.matmul(level.Keys.t()).softmax(-1);                   // [N, P, s]
                    (weight, id) = probs.topk(f, -1);                                       // [N, P, f]
                    if (f > 1) weight = weight.div(weight.sum(-1, keepdim: true));          // renormalised
                    break;
                }
                case SmoreGateType.NoisyTopK:
                {
                    var cosine = normalize(query, 2.0, -1, 1e-12).matmul(level.Keys.t());   // [N, P, s], keys already unit rows
                    (var top, id) = cosine.topk(f, -1);                                     // [N, P, f]
                    weight = f > 1 ? top.softmax(-1) : top;                                 // f = 1: the raw cosine logit
                    break;
                }
                default:
                {
                    weight = query.matmul(level.Keys.t()).softmax(-1);                      // [N, P, s]
                    id = level.AllIds!.expand(n, paths, level.Experts);                     // [N, P, s]: every expert
                    break;
                }
            }
            ids[l] = id.reshape(n, paths * f);                                              // [N, P·f]
            weights[l] = weight.reshape(n, paths * f);                                      // [N, P·f]
            if (l > 0)
            {
                // Children's routers see the token and the keys of their selected ancestors, top-down.
                long width = gateInput.size(2);
                var keys = level.Keys.index_select(0, ids[l].flatten()).view(n, paths * f, level.GateDim); // [N, P·f, d_g]
                var parent = gateInput.unsqueeze(2).expand(n, paths, f, width).reshape(n, paths * f, width); // [N, P·f, width]
                gateInput = cat([parent, keys], -1);                                        // [N, P·f, width + d_g]
            }
            paths *= f;
        }
        return new SmoreRouting(ids, weights);
    }

    /// <summary>The experts, bottom-up (l = 0 … L−1), along <paramref name="routing"/>; returns the module's delta <c>[N, d_out]</c>.</summary>
    /// <param name="projected"><see cref="Project"/> of the tokens (every sub-layer's experts read the original token).</param>
    public static Tensor Evaluate(SmoreModule module, Tensor projected, SmoreRouting routing)
    {
        var config = module.Config;
        long n = projected.size(0);
        Tensor? below = null;                                                               // x_l per path of sub-layer l: [N, P_l, d_l]
        for (int l = 0; l < module.Levels.Count; l++)
        {
            var level = module.Levels[l];
            var ids = routing.Ids[l];                                                       // [N, P_l]
            long paths = ids.size(1), parents = paths / level.FanOut;
            int s = level.Experts, r = level.Rank, dOut = level.DimOut;

            // Every expert of the sub-layer at once: u_e = sc·(B_e(A_e x + a_e) + b_e), sc folded into B and b at load.
            var down = projected.narrow(1, level.InputOffset, s * r).reshape(n, s, r).transpose(0, 1); // [s, N, r]
            var all = TorchScalars.Add(down.bmm(level.B), level.BBias).transpose(0, 1);       // [N, s, d_{l+1}]
            var selected = all.gather(1, ids.unsqueeze(-1).expand(n, paths, dOut));         // [N, P_l, d_{l+1}]

            Tensor perChild;                                                                // weighted by α below
            Tensor? unweighted = null;                                                      // "child": the W term is not weighted
            if (below is null)
                perChild = config.ActivationPosition == SmoreActivationPosition.All ? Activate(selected, config.ExpertActivation, level.Slope) : selected;
            else
            {
                var child = config.ActivationPosition == SmoreActivationPosition.All ? below : Activate(below, config.ExpertActivation, level.Slope);
                var fromChildren = linear(child, level.W!, level.WBias);                    // [N, P_l, d_{l+1}]
                if (config.ActivationPosition == SmoreActivationPosition.Child)
                {
                    perChild = selected;
                    unweighted = fromChildren;
                }
                else
                {
                    perChild = TorchScalars.Add(selected, fromChildren);                    // [N, P_l, d_{l+1}]
                    if (config.ActivationPosition == SmoreActivationPosition.All) perChild = Activate(perChild, config.ExpertActivation, level.Slope);
                }
            }

            // Each parent: Σ over its f children of α · perChild, as one batched GEMM [1, f] @ [f, d_{l+1}].
            var alpha = routing.Weights[l].reshape(n * parents, 1, level.FanOut);           // [N·P_{l+1}, 1, f]
            var next = alpha.bmm(perChild.reshape(n * parents, level.FanOut, dOut)).view(n, parents, dOut); // [N, P_{l+1}, d_{l+1}]
            if (unweighted is not null) next = TorchScalars.Add(next, unweighted.reshape(n, parents, level.FanOut, dOut).sum(2));
            below = next;
        }
        return linear(below!.reshape(n, module.FinalW.size(1)), module.FinalW, module.FinalB); // [N, d_out]
    }

    /// <summary>Routing then experts: the module's delta <c>[N, d_out]</c> in float32, and where the tokens went.</summary>
    public static (Tensor Delta, SmoreRouting Routing) Forward(SmoreModule module, Tensor x)
    {
        var x32 = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);             // [N, d_in]
        var projected = Project(module, x32);                                               // [N, d_down + Σ s·r]
        var routing = Route(module, projected);
        return (Evaluate(module, projected, routing), routing);
    }

    /// <summary>
    /// Counts the step's selections of one module on the device (no host sync): every (token, path) selection of every
    /// sub-layer under the label <c>l&lt;level&gt;.&lt;index&gt;</c> (<see cref="SmoreDescription.ExpertLabels"/> order). An
    /// expert reached through several parent paths of one token counts once per path, as the official code's load does.
    /// </summary>
    public static void Record(ExpertStepTally tally, ExpertSite site, SmoreModule module, SmoreRouting routing)
    {
        var labelled = new Tensor[routing.Ids.Length];
        for (int l = 0; l < labelled.Length; l++)
            labelled[l] = l == 0 ? routing.Ids[0] : module.Levels[l].Labels.index_select(0, routing.Ids[l].flatten()).view_as(routing.Ids[l]); // [N, P_l]
        tally.RecordTopK(site, labelled.Length == 1 ? labelled[0] : cat(labelled, 1));                                   // [N, Σ P_l]
    }

    private static Tensor Activate(Tensor t, SmoreActivation activation, Tensor? slope) => activation switch
    {
        SmoreActivation.Identity => t,
        SmoreActivation.Tanh => t.tanh(),
        SmoreActivation.Relu => relu(t),
        _ => prelu(t, slope!),
    };
}
