using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Kinds.Omoe;

/// <summary>
/// One OMoE adapter's modules at the sibling projections of one layer that it adapts (two or more of q|k|v, or gate
/// and up: <see cref="ProjectionNames.Siblings"/>, one input), stored side by side so that a step runs them in ONE
/// sequence of calls (<see cref="Deltas"/>): one router GEMM, one GEMM for every A, one batched GEMM into every
/// sibling's and expert's coordinates, one batched QR over (token, sibling) pairs; only the bases stay one GEMM each. Exactly the
/// per-projection result (<see cref="OmoeModule.Delta"/>). Owns the side-by-side tensors; its modules hold views of them.
/// </summary>
public sealed class OmoeSiblings : IDisposable
{
    private readonly Tensor _router;        // [J·n, d_in] float32
    private readonly Tensor _aAll;          // [J·n·r, d_in]
    private readonly Tensor _coordinates;   // [J·n, r, p] float32

    private OmoeSiblings(IReadOnlyList<Projection> projections, IReadOnlyList<(OmoeModule Module, ExpertSite Site)> modules, Tensor router, Tensor aAll, Tensor coordinates)
    {
        Projections = projections;
        Modules = modules;
        _router = router;
        _aAll = aAll;
        _coordinates = coordinates;
    }

    /// <summary>The adapted siblings, in the model's output order.</summary>
    public IReadOnlyList<Projection> Projections { get; }
    /// <summary>Per sibling its module (views of the side-by-side tensors) and site.</summary>
    public IReadOnlyList<(OmoeModule Module, ExpertSite Site)> Modules { get; }

    /// <summary>
    /// Stores <paramref name="modules"/> (one adapter's, one per projection of <paramref name="projections"/>, sharing
    /// n, r and p) side by side; they are replaced by views (<see cref="Modules"/>) and must not be used afterwards.
    /// </summary>
    internal static OmoeSiblings Of(IReadOnlyList<Projection> projections, IReadOnlyList<(OmoeModule Module, ExpertSite Site)> modules)
    {
        var views = OmoeModule.SideBySide([.. modules.Select(m => m.Module)], out var router, out var aAll, out var coordinates);
        return new OmoeSiblings(projections, [.. views.Zip(modules, (v, m) => (v, m.Site))], router, aAll, coordinates);
    }

    /// <summary>Whether two OMoE modules can run side by side: the same n, r, p and input.</summary>
    internal static bool Compatible(OmoeModule a, OmoeModule b) =>
        a.Experts == b.Experts && a.Rank == b.Rank && a.BasisRank == b.BasisRank && a.InFeatures == b.InFeatures;

    /// <summary>
    /// Every sibling's contribution for the tokens <paramref name="x"/> <c>[N, d_in]</c>: per sibling j the delta
    /// <c>[N, d_out_j]</c> (in the bases' dtype) and, with top_k, the selected expert ids <c>[N, K]</c> (else null).
    /// </summary>
    public (Tensor[] Deltas, Tensor?[] Selected) Deltas(Tensor x, MixtureForm form = MixtureForm.Auto)
    {
        var first = Modules[0].Module;
        int siblings = Modules.Count, n = first.Experts;
        long t = x.size(0), p = first.BasisRank;
        var xf = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);                        // [N, d_in]
        var logits = linear(xf, _router);                                                             // [N, J·n]: sibling j's router at columns j·n …
        var xa = x.dtype == _aAll.dtype ? x : x.to(_aAll.dtype);
        var h = linear(xa, _aAll).view(t, (long)siblings * n, first.Rank);                           // [N, J·n, r]
        if (h.dtype != ScalarType.Float32) h = h.to(ScalarType.Float32);
        var byExpert = bmm(h.transpose(0, 1), _coordinates);                                          // [J·n, N, r]·[J·n, r, p] → [J·n, N, p]
        Tensor v;                                                                                     // [N, J, p]
        Tensor? chosen;                                                                               // [N·J, K] or [N, J, K]
        if (NativeMixtures.Runs(form, _router, t * siblings, OmoeModule.MaxNativeRows))
            (v, chosen) = OmoeKernel.Mix(logits, byExpert, siblings, n, first.TopK, first.RescaleNorm, first.EpsValue);
        else
        {
            Tensor gates;                                                                             // [N·J, k]
            (gates, chosen) = OmoeModule.Gate(logits.view(t * siblings, n), first.TopK);              // row t·J + j = sibling j's router on token t
            var coordinates = byExpert.view(siblings, n, t, p).permute(2, 0, 1, 3).reshape(t * siblings, n, p); // [N·J, n, p]
            v = OmoeModule.Combine(coordinates, gates, chosen, first.Eps, first.RescaleNorm).view(t, siblings, p);
        }
        var deltas = new Tensor[siblings];
        var selected = new Tensor?[siblings];
        var chosenBySibling = chosen?.view(t, siblings, -1);                                          // [N, J, K]
        for (int j = 0; j < siblings; j++)
        {
            var basis = Modules[j].Module.Basis;                                                       // [d_out_j, p]
            var vj = v.select(1, j);                                                                   // [N, p]
            deltas[j] = linear(vj.dtype == basis.dtype ? vj : vj.to(basis.dtype), basis);              // [N, d_out_j]
            selected[j] = chosenBySibling?.select(1, j);                                               // [N, K]
        }
        return (deltas, selected);
    }

    /// <summary>Frees the side-by-side tensors (the modules' views are disposed by their owner).</summary>
    public void Dispose()
    {
        _router.Dispose();
        _aAll.Dispose();
        _coordinates.Dispose();
    }
}
