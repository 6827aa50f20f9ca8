using AdapterServe.Modeling;
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
/// <c>A_all [E·r, d_in]</c> and their B into <c>B_all [d_out, E·r]</c> (ranks zero-padded to the largest r, each
/// expert's scaling folded in), built once at load. Per step, whatever E, K or the routing:
/// router GEMM → softmax → top-K → renormalise → scatter into dense weights <c>w [N, E]</c> (zero outside top-K) →
/// <c>H = x A_allᵀ</c> viewed <c>[N, E, r]</c> → <c>H ⊙ w</c> → <c>H.view(N, E·r) B_allᵀ</c> (+ <c>w · bias_all</c>).
/// Routing stays on the device. Owns its tensors.
/// </summary>
public sealed class MixerModule : IDisposable
{
    private MixerModule(int experts, int rank, int topK, bool renormalize, Tensor router, Tensor? routerBias, Tensor aAll, Tensor bAll, Tensor? biasAll)
    {
        Experts = experts;
        Rank = rank;
        TopK = topK;
        Renormalize = renormalize;
        Router = router;
        RouterBias = routerBias;
        AAll = aAll;
        BAll = bAll;
        BiasAll = biasAll;
        InFeatures = aAll.size(1);
        OutFeatures = bAll.size(0);
        Bytes = new[] { router, routerBias, aAll, bAll, biasAll }.Sum(t => t is null ? 0 : t.NumberOfElements * t.ElementSize);
    }

    public int Experts { get; }
    /// <summary>r_max: every expert's slot in the stack has this many rows (zero-padded).</summary>
    public int Rank { get; }
    public int TopK { get; }
    public bool Renormalize { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    public long Bytes { get; }
    /// <summary><c>W_g [E, d_in]</c>, float32.</summary>
    public Tensor Router { get; }
    /// <summary><c>b_g [E]</c>, float32, or null.</summary>
    public Tensor? RouterBias { get; }
    /// <summary><c>[E·r, d_in]</c>.</summary>
    public Tensor AAll { get; }
    /// <summary><c>[d_out, E·r]</c>, scalings folded in.</summary>
    public Tensor BAll { get; }
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
        var bAll = zeros([dOut, e * r], ScalarType.Float32);                          // [d_out, E·r]
        var biasAll = anyBias ? zeros([e, dOut], ScalarType.Float32) : null;          // [E, d_out]
        for (int i = 0; i < e; i++)
        {
            if (experts[i] is not { } x) continue;
            long ri = x.A.size(0);
            if (x.A.dim() != 2 || x.A.size(1) != dIn || x.B.dim() != 2 || x.B.size(0) != dOut || x.B.size(1) != ri)
                throw new ArgumentException($"expert {i}: A [{string.Join(", ", x.A.shape)}] and B [{string.Join(", ", x.B.shape)}] do not fit [r, {dIn}] and [{dOut}, r]", nameof(experts));
            aAll.narrow(0, (long)i * r, ri).copy_(x.A);                                 // rows i·r .. i·r + r_e
            bAll.narrow(1, (long)i * r, ri).copy_(x.B);                                 // columns i·r .. i·r + r_e
            if (x.Bias is not null) biasAll!.select(0, i).copy_(x.Bias);
        }
        Tensor Keep(Tensor t, ScalarType type) => t.to(type, device, copy: true).contiguous().DetachFromDisposeScope();
        return new MixerModule(e, r, topK, renormalize,
            Keep(router, ScalarType.Float32), routerBias is null ? null : Keep(routerBias, ScalarType.Float32),
            Keep(aAll, dtype), Keep(bAll, dtype), biasAll is null ? null : Keep(biasAll, dtype));
    }

    /// <summary>
    /// The router's choice for every token: dense weights <c>[N, E]</c> (the renormalised top-K probabilities, zero
    /// elsewhere) and the chosen expert ids <c>[N, K]</c>. Float32 softmax; everything stays on the device.
    /// </summary>
    public (Tensor Weights, Tensor Selected) Route(Tensor x)
    {
        var xf = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);       // [N, d_in]
        var p = softmax(linear(xf, Router, RouterBias), -1);                          // [N, E]
        var (top, selected) = p.topk(TopK, -1);                                       // [N, K], [N, K]
        if (Renormalize) top = top.div(top.sum(-1, keepdim: true));       // [N, K] p̃ = p_T / Σ p_T
        var weights = zeros_like(p).scatter_(1, selected, top);                       // [N, E], zero outside top-K
        return (weights, selected);
    }

    /// <summary><c>Σ_{e∈T} p̃_e · s_e · B_e(A_e x)</c> for every token <c>x [N, d_in]</c> → <c>[N, d_out]</c> in the weights' dtype.</summary>
    public Tensor Delta(Tensor x, out Tensor selected)
    {
        var (weights, chosen) = Route(x);                                            // [N, E], [N, K]
        selected = chosen;
        long n = x.size(0);
        var xa = x.dtype == AAll.dtype ? x : x.to(AAll.dtype);
        var w = weights.dtype == AAll.dtype ? weights : weights.to(AAll.dtype);       // [N, E]
        var h = linear(xa, AAll).view(n, Experts, Rank);                              // [N, E, r]
        var gated = h.mul(w.unsqueeze(-1)).view(n, (long)Experts * Rank);             // [N, E·r]
        var y = linear(gated, BAll);                                                  // [N, d_out]
        return BiasAll is null ? y : TorchScalars.AddInPlace(y, w.matmul(BiasAll));   // + w [N, E] · s·bias [E, d_out]
    }

    /// <summary>A copy on <paramref name="device"/> (host tier → device tier).</summary>
    public MixerModule To(Device device)
    {
        using var inferenceOff = inference_mode(false);
        Tensor Copy(Tensor t) => t.to(device, copy: true).DetachFromDisposeScope();
        return new MixerModule(Experts, Rank, TopK, Renormalize, Copy(Router), RouterBias is null ? null : Copy(RouterBias),
            Copy(AAll), Copy(BAll), BiasAll is null ? null : Copy(BiasAll));
    }

    public void Dispose()
    {
        Router.Dispose();
        RouterBias?.Dispose();
        AAll.Dispose();
        BAll.Dispose();
        BiasAll?.Dispose();
    }
}
