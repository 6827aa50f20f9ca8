using AdapterServe.Adapters.Kinds.Lora;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Kinds.LoraMixer;

/// <summary>One expert's delta at one module, as served: <c>ΔW_e = B_e·A_e</c> with the expert's scaling folded into B.</summary>
/// <param name="A"><c>[r_e, d_in]</c>.</param>
/// <param name="B"><c>[d_out, r_e]</c> = s_e·B_e.</param>
/// <param name="Bias"><c>[d_out]</c> = s_e·bias_e, or null.</param>
public sealed record ExpertDelta(Tensor A, Tensor B, Tensor? Bias);

/// <summary>
/// A LoRA-Mixer at one adapted projection (methods.md §4.1), in the fused form: the experts' A stacked into
/// <c>A_all [E·r, d_in]</c> and their B, transposed, into <c>Bᵀ_all [E·r, d_out]</c> (ranks zero-padded to the largest r,
/// each expert's scaling folded in), built once at load. Per step, whatever E, K or the routing: router GEMM → top-K of
/// the logits → softmax over the K chosen logits (which is the renormalised <c>p̃ = p_T / Σ p_T</c>; without
/// renormalisation, softmax over all E first, then top-K) → gate weights scattered into <c>w [N, E]</c> (zero outside
/// top-K) → <c>H = x A_allᵀ</c> viewed <c>[N, E, r]</c> → <c>H ⊙ w</c> → <c>y += H.view(N, E·r) Bᵀ_all</c> (+ <c>w · bias_all</c>).
/// Gathering only the chosen experts' blocks per token instead was measured slower in the engine at one token
/// (135m, b1: 57–65 ms against 49–51 ms per step). Routing stays on the device. Owns its tensors.
/// </summary>
public sealed class MixerModule : IDisposable
{
    private readonly int[] _expertRanks;         // r_e per expert (0: it does not adapt this module)
    private readonly bool[] _expertBiases;       // whether expert e has a bias row here

    private MixerModule(int experts, int rank, int topK, bool renormalize, Tensor router, Tensor? routerBias, Tensor aAll, Tensor bTAll, Tensor? biasAll,
        int[] expertRanks, bool[] expertBiases, SharedStorage? storage = null)
    {
        _expertRanks = expertRanks;
        _expertBiases = expertBiases;
        Experts = experts;
        Rank = rank;
        TopK = topK;
        Renormalize = renormalize;
        Router = router;
        RouterBias = routerBias;
        AAll = aAll;
        BTAll = bTAll;
        BiasAll = biasAll;
        InFeatures = aAll.size(1);
        OutFeatures = bTAll.size(1);
        RouterBytes = new[] { router, routerBias }.Sum(t => t is null ? 0 : t.NumberOfElements * t.ElementSize);
        Storage = storage ?? new SharedStorage(new[] { aAll, bTAll, biasAll }.Sum(t => t is null ? 0 : t.NumberOfElements * t.ElementSize),
            $"LoRA-Mixer expert stack [{experts}×{rank}, {InFeatures} → {OutFeatures}] on {aAll.device}");
    }

    public int Experts { get; }
    /// <summary>r_max: every expert's slot in the stack has this many rows (zero-padded).</summary>
    public int Rank { get; }
    public int TopK { get; }
    public bool Renormalize { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    /// <summary>Bytes of the router and its bias (this mixer's own).</summary>
    public long RouterBytes { get; }
    /// <summary>The stacked experts (A, Bᵀ, biases): views of it serve the same experts called alone (<see cref="ExpertBlock"/>).</summary>
    public SharedStorage Storage { get; }
    /// <summary><c>W_g [E, d_in]</c>, float32.</summary>
    public Tensor Router { get; }
    /// <summary><c>b_g [E]</c>, float32, or null.</summary>
    public Tensor? RouterBias { get; }
    /// <summary><c>[E·r, d_in]</c>: expert e's A in rows <c>e·r .. e·r + r_e</c>.</summary>
    public Tensor AAll { get; }
    /// <summary><c>[E·r, d_out]</c>: expert e's <c>(s_e·B_e)ᵀ</c> in rows <c>e·r .. e·r + r_e</c>.</summary>
    public Tensor BTAll { get; }
    /// <summary><c>[E, d_out]</c> = s_e·bias_e (zero rows for experts without a bias), or null when no expert has one.</summary>
    public Tensor? BiasAll { get; }

    /// <summary>
    /// Stacks the experts (null: the expert does not adapt this module, it contributes zero here) under the router.
    /// Computed in float32, stored in <paramref name="dtype"/> on <paramref name="device"/> (the router stays float32).
    /// </summary>
    /// <param name="router"><c>W_g [E, d_in]</c>.</param>
    /// <param name="routerBias"><c>b_g [E]</c> or null.</param>
    public static MixerModule Build(Tensor router, Tensor? routerBias, IReadOnlyList<ExpertDelta?> experts, int topK, bool renormalize, Device device, ScalarType dtype)
    {
        ArgumentNullException.ThrowIfNull(router);
        ArgumentNullException.ThrowIfNull(experts);
        int e = experts.Count;
        if (router.dim() != 2 || router.size(0) != e)
            throw new ArgumentException($"router must be [{e}, d_in], got [{string.Join(", ", router.shape)}]", nameof(router));
        if (topK < 1 || topK > e) throw new ArgumentOutOfRangeException(nameof(topK), $"top_k must be in 1..{e}, got {topK}");
        long dIn = router.size(1);
        var present = experts.Where(x => x is not null).Select(x => x!).ToList();
        if (present.Count == 0) throw new ArgumentException("no expert adapts this module", nameof(experts));
        long dOut = present[0].B.size(0);
        int r = (int)present.Max(x => x.A.size(0));
        bool anyBias = present.Any(x => x.Bias is not null);

        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        var aAll = zeros([e * r, dIn], ScalarType.Float32);                           // [E·r, d_in]
        var bTAll = zeros([e * r, dOut], ScalarType.Float32);                         // [E·r, d_out]
        var biasAll = anyBias ? zeros([e, dOut], ScalarType.Float32) : null;          // [E, d_out]
        var ranks = new int[e];
        var biases = new bool[e];
        for (int i = 0; i < e; i++)
        {
            if (experts[i] is not { } x) continue;
            long ri = x.A.size(0);
            ranks[i] = (int)ri;
            biases[i] = x.Bias is not null;
            if (x.A.dim() != 2 || x.A.size(1) != dIn || x.B.dim() != 2 || x.B.size(0) != dOut || x.B.size(1) != ri)
                throw new ArgumentException($"expert {i}: A [{string.Join(", ", x.A.shape)}] and B [{string.Join(", ", x.B.shape)}] do not fit [r, {dIn}] and [{dOut}, r]", nameof(experts));
            aAll.narrow(0, (long)i * r, ri).copy_(x.A);                                 // rows i·r .. i·r + r_e
            bTAll.narrow(0, (long)i * r, ri).copy_(x.B.t());                            // rows i·r .. i·r + r_e ← (s·B_e)ᵀ
            if (x.Bias is not null) biasAll!.select(0, i).copy_(x.Bias);
        }
        Tensor Keep(Tensor t, ScalarType type) => t.to(type, device, copy: true).contiguous().DetachFromDisposeScope();
        return new MixerModule(e, r, topK, renormalize,
            Keep(router, ScalarType.Float32), routerBias is null ? null : Keep(routerBias, ScalarType.Float32),
            Keep(aAll, dtype), Keep(bTAll, dtype), biasAll is null ? null : Keep(biasAll, dtype), ranks, biases);
    }

    /// <summary>
    /// A mixer over the same experts with another router: its own router (float32, on the stack's device) over views of
    /// this module's stacked experts (no copy; <see cref="Storage"/> is shared).
    /// </summary>
    /// <param name="router"><c>W_g [E, d_in]</c>.</param>
    /// <param name="routerBias"><c>b_g [E]</c> or null.</param>
    public MixerModule WithRouter(Tensor router, Tensor? routerBias, int topK, bool renormalize)
    {
        if (router.dim() != 2 || router.size(0) != Experts || router.size(1) != InFeatures)
            throw new ArgumentException($"router must be [{Experts}, {InFeatures}], got [{string.Join(", ", router.shape)}]", nameof(router));
        if (topK < 1 || topK > Experts) throw new ArgumentOutOfRangeException(nameof(topK), $"top_k must be in 1..{Experts}, got {topK}");
        using var inferenceOff = inference_mode(false);
        var device = AAll.device;
        Tensor Keep(Tensor t) => t.to(ScalarType.Float32, device, copy: true).contiguous().DetachFromDisposeScope();
        static Tensor View(Tensor t) => t.view(t.shape).DetachFromDisposeScope();                // a new handle on the same storage
        return new MixerModule(Experts, Rank, topK, renormalize, Keep(router), routerBias is null ? null : Keep(routerBias),
            View(AAll), View(BTAll), BiasAll is null ? null : View(BiasAll), _expertRanks, _expertBiases, Storage);
    }

    /// <summary>
    /// New views of expert <paramref name="expert"/>'s rows of the stack: <c>A_e [r_e, d_in]</c>, <c>(s_e·B_e)ᵀ [r_e, d_out]</c>
    /// and <c>s_e·bias_e</c> (null when it has none); null when the expert does not adapt this module.
    /// </summary>
    public SharedLoraBlock? ExpertBlock(int expert)
    {
        int r = _expertRanks[expert];
        if (r == 0) return null;
        using var inferenceOff = inference_mode(false);
        long first = (long)expert * Rank;
        return new SharedLoraBlock(
            AAll.narrow(0, first, r).DetachFromDisposeScope(),                            // [r_e, d_in]
            BTAll.narrow(0, first, r).DetachFromDisposeScope(),                           // [r_e, d_out]
            _expertBiases[expert] ? BiasAll!.select(0, expert).DetachFromDisposeScope() : null, // [d_out]
            Storage);
    }

    /// <summary>
    /// The router's choice for every token: the chosen expert ids <c>[N, K]</c> and their gate weights <c>[N, K]</c>
    /// (renormalised over the K when <see cref="Renormalize"/>). Float32; everything stays on the device.
    /// </summary>
    public (Tensor Gates, Tensor Selected) RouteTopK(Tensor x)
    {
        var xf = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);       // [N, d_in]
        var logits = linear(xf, Router, RouterBias);                                  // [N, E]
        if (Renormalize)
        {
            // softmax is monotonic, so the top-K of p are the top-K logits, and p_T / Σ p_T = softmax over those K logits.
            var (top, chosen) = logits.topk(TopK, -1);                                // [N, K], [N, K]
            return (softmax(top, -1), chosen);
        }
        var (gates, selected) = softmax(logits, -1).topk(TopK, -1);                   // [N, K] p_T, [N, K]
        return (gates, selected);
    }

    /// <summary>
    /// The router's choice as dense weights <c>[N, E]</c> (the gate weights of <see cref="RouteTopK"/>, zero outside
    /// the top-K) and the chosen expert ids <c>[N, K]</c>.
    /// </summary>
    public (Tensor Weights, Tensor Selected) Route(Tensor x)
    {
        var (gates, selected) = RouteTopK(x);                                         // [N, K], [N, K]
        var weights = zeros([x.size(0), Experts], gates.dtype, gates.device).scatter_(1, selected, gates); // [N, E]
        return (weights, selected);
    }

    /// <summary><c>y += scale · Σ_{e∈T} p̃_e · s_e · B_e(A_e x)</c> in place for every token <c>x [N, d_in]</c>; <paramref name="y"/> <c>[N, d_out]</c> is in the weights' dtype.</summary>
    public void AddDelta(Tensor x, Tensor y, float scale, out Tensor selected)
    {
        var (weights, chosen) = Route(x);                                             // [N, E] zero outside top-K, [N, K]
        selected = chosen;
        long n = x.size(0);
        var xa = x.dtype == AAll.dtype ? x : x.to(AAll.dtype);
        var w = weights.dtype == AAll.dtype ? weights : weights.to(AAll.dtype);       // [N, E]
        var gated = linear(xa, AAll).view(n, Experts, Rank).mul(w.unsqueeze(-1)).view(n, (long)Experts * Rank); // [N, E·r]
        y.addmm_(gated, BTAll, 1f, scale);                                            // [N, d_out]
        if (BiasAll is not null) y.addmm_(w, BiasAll, 1f, scale);                     // + w [N, E] · s·bias [E, d_out]
    }

    /// <summary><c>Σ_{e∈T} p̃_e · s_e · B_e(A_e x)</c> for every token <c>x [N, d_in]</c> → <c>[N, d_out]</c> in the weights' dtype.</summary>
    public Tensor Delta(Tensor x, out Tensor selected)
    {
        var y = zeros([x.size(0), OutFeatures], AAll.dtype, AAll.device);            // [N, d_out]
        AddDelta(x, y, 1f, out selected);
        return y;
    }

    /// <summary>A copy on <paramref name="device"/> (host tier → device tier).</summary>
    public MixerModule To(Device device)
    {
        using var inferenceOff = inference_mode(false);
        Tensor Copy(Tensor t) => t.to(device, copy: true).DetachFromDisposeScope();
        return new MixerModule(Experts, Rank, TopK, Renormalize, Copy(Router), RouterBias is null ? null : Copy(RouterBias),
            Copy(AAll), Copy(BTAll), BiasAll is null ? null : Copy(BiasAll), _expertRanks, _expertBiases);
    }

    public void Dispose()
    {
        Router.Dispose();
        RouterBias?.Dispose();
        AAll.Dispose();
        BTAll.Dispose();
        BiasAll?.Dispose();
    }
}
