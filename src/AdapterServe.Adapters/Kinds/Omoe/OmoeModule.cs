using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Kinds.Omoe;

/// <summary>
/// OMoE at one adapted projection (methods.md §4.2): n LoRA experts of rank r whose per-token outputs
/// <c>E_i = s·B_i(A_i x)</c> are orthonormalised in expert order (Gram–Schmidt, done as a batched reduced QR with the
/// sign fix <c>Q ← Q·sign(diag R)</c>) and combined as <c>Σ_i g_i · ‖E_i‖ · q_i</c> (<c>rescale: "norm"</c>) or
/// <c>Σ_i g_i · q_i</c> (<c>"none"</c>), with <c>g = softmax(x W_gᵀ)</c>; with <c>top_k</c> only the K selected experts
/// (kept in expert order, gates renormalised over them) are orthonormalised. ε guard: an expert whose Gram–Schmidt
/// residual is shorter than ε contributes nothing; such columns are moved behind the others before the QR so they
/// cannot bend the directions of the remaining experts (exactly Gram–Schmidt with a skipped column).
/// <para>
/// Served in the experts' own coordinates: the stacked up-projections <c>B_cat = [s·B_1 … s·B_n] [d_out, n·r]</c>
/// are factored once at load as <c>B_cat = U·R_B</c> (reduced QR: <c>U [d_out, p]</c> with orthonormal columns,
/// <c>p = min(d_out, n·r)</c>). Then <c>E_i = U·S_i</c> with <c>S_i = R_B[:, block i]·h_i</c> in <c>p</c> dimensions, and
/// U preserves every inner product, so Gram–Schmidt of the <c>S_i</c> gives the same R, norms and guards as that of
/// the <c>E_i</c>, and <c>Σ c_i q_i = U·Σ c_i q^S_i</c>. Per token the orthonormalisation works on <c>[p, n]</c> (64 × 4
/// for four r16 experts) instead of <c>[d_out, n]</c>, and the output space is reached by one GEMM at the end.
/// </para>
/// Per step a fixed number of native calls whatever n, K or the routing: one GEMM for all A (<c>A_all [n·r, d_in]</c>),
/// one batched GEMM into the coordinates, one batched QR, one GEMM against U. Steps of few rows on the CPU run the
/// routing, Gram–Schmidt and combination in one native call instead (<see cref="Delta"/>, <see cref="OmoeKernel"/>).
/// Built once at load; owns its tensors.
/// (A block-diagonal <c>[n·r, n·p]</c> coordinate matrix would make that GEMM a 2-D one, about 7 µs cheaper at one
/// token with the weights in cache, but it is 3/4 zeros: four times the bytes read per step.)
/// </summary>
public sealed class OmoeModule : IDisposable
{
    private readonly Tensor _eps;     // [] float32

    private OmoeModule(int experts, int rank, int? topK, bool rescaleNorm, Tensor router, Tensor aAll, Tensor basis, Tensor coordinates, Tensor eps)
    {
        Experts = experts;
        Rank = rank;
        TopK = topK;
        RescaleNorm = rescaleNorm;
        Router = router;
        AAll = aAll;
        Basis = basis;
        Coordinates = coordinates;
        _eps = eps;
        EpsValue = eps.item<float>();
        InFeatures = aAll.size(1);
        OutFeatures = basis.size(0);
        Bytes = new[] { router, aAll, basis, coordinates }.Sum(t => t.NumberOfElements * t.ElementSize);
    }

    public int Experts { get; }
    public int Rank { get; }
    /// <summary>null: every expert takes part.</summary>
    public int? TopK { get; }
    public bool RescaleNorm { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    public long Bytes { get; }
    /// <summary><c>W_g [n, d_in]</c>, float32.</summary>
    public Tensor Router { get; }
    /// <summary><c>[n·r, d_in]</c>.</summary>
    public Tensor AAll { get; }
    /// <summary><c>U [d_out, p]</c>: orthonormal columns spanning the experts' up-projections (<c>B_cat = U·R_B</c>).</summary>
    public Tensor Basis { get; }
    /// <summary><c>R_B</c> seen per expert and transposed, <c>[n, r, p]</c>, float32: expert i's <c>s·B_i = U·Coordinates[i]ᵀ</c>.</summary>
    public Tensor Coordinates { get; }

    /// <summary>p: the width of the experts' coordinates, <c>min(d_out, n·r)</c>.</summary>
    public long BasisRank => Basis.size(1);

    /// <summary>Experts that take part per token: K, or n.</summary>
    public int Active => TopK ?? Experts;

    /// <param name="router"><c>W_g [n, d_in]</c>.</param>
    /// <param name="a">Per expert <c>A_i [r, d_in]</c>.</param>
    /// <param name="b">Per expert <c>B_i [d_out, r]</c> (unscaled).</param>
    /// <param name="scaling">s = lora_alpha / r.</param>
    public static OmoeModule Build(Tensor router, IReadOnlyList<Tensor> a, IReadOnlyList<Tensor> b, double scaling, int? topK, bool rescaleNorm, double eps, Device device, ScalarType dtype)
    {
        ArgumentNullException.ThrowIfNull(router);
        int n = a.Count;
        if (n < 1 || b.Count != n) throw new ArgumentException($"need as many A as B (got {a.Count} and {b.Count})", nameof(b));
        if (router.dim() != 2 || router.size(0) != n) throw new ArgumentException($"router must be [{n}, d_in], got [{string.Join(", ", router.shape)}]", nameof(router));
        if (topK is { } k && (k < 1 || k > n)) throw new ArgumentOutOfRangeException(nameof(topK), $"top_k must be in 1..{n}, got {k}");
        if (!(eps >= 0) || !double.IsFinite(eps)) throw new ArgumentOutOfRangeException(nameof(eps), "eps must be a finite number ≥ 0");

        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        int r = (int)a[0].size(0);
        var aAll = cat(a.Select(t => t.to(ScalarType.Float32)).ToArray(), 0);                                  // [n·r, d_in]
        var bCat = TorchScalars.Mul(cat(b.Select(t => t.to(ScalarType.Float64)).ToArray(), 1), scaling);       // [d_out, n·r] = [s·B_1 … s·B_n]
        var (basis, rB) = linalg.qr(bCat);                                                                     // [d_out, p], [p, n·r] (reduced)
        var coordinates = rB.reshape(rB.size(0), n, r).permute(1, 2, 0);                                        // [n, r, p]
        Tensor Keep(Tensor t, ScalarType type) => t.to(type, device, copy: true).contiguous().DetachFromDisposeScope();
        return new OmoeModule(n, r, topK, rescaleNorm,
            Keep(router, ScalarType.Float32), Keep(aAll, dtype), Keep(basis, dtype), Keep(coordinates, ScalarType.Float32),
            Keep(tensor((float)eps), ScalarType.Float32));
    }

    /// <summary>
    /// Gates and the participating experts for every token: gates <c>[N, k]</c> and, with top_k, the selected expert
    /// ids <c>[N, K]</c> in ascending (expert) order; without top_k, null (all experts, in order).
    /// </summary>
    public (Tensor Gates, Tensor? Selected) Route(Tensor x)
    {
        var xf = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);      // [N, d_in]
        return Gate(linear(xf, Router), TopK);                                       // [N, n] logits
    }

    /// <summary>
    /// The routing from the router's logits <paramref name="logits"/> <c>[N, n]</c> (float32): <c>g = softmax</c>; with
    /// <paramref name="topK"/>, the K most probable experts kept in expert order with their gates renormalised over them.
    /// Shared by the per-group path (<see cref="Route"/>) and the slot path (<c>OmoeSlotStep</c>).
    /// </summary>
    /// <returns>Gates <c>[N, k]</c>; the selected expert ids <c>[N, K]</c> (int64, ascending), or null without top_k.</returns>
    internal static (Tensor Gates, Tensor? Selected) Gate(Tensor logits, int? topK)
    {
        var g = softmax(logits, -1);                                                 // [N, n]
        if (topK is not { } k) return (g, null);
        var (top, chosen) = g.topk(k, -1);                                           // [N, K] by probability
        var (selected, perm) = chosen.sort(-1);                                      // [N, K] expert order
        var gates = top.gather(1, perm);                                             // [N, K]
        gates = gates.div(gates.sum(-1, keepdim: true));                             // renormalised over the K
        return (gates, selected);
    }

    /// <summary>The per-token expert outputs in the experts' coordinates, <c>S [N, n, p]</c>: row i = <c>R_B[:, block i]·(A_i x)</c>, float32 (<c>E_i = U·S_i</c>).</summary>
    public Tensor ExpertCoordinates(Tensor x) => CoordinatesByExpert(x).transpose(0, 1);

    /// <summary><see cref="ExpertCoordinates"/> as the batched GEMM leaves them, expert first: <c>[n, N, p]</c>.</summary>
    private Tensor CoordinatesByExpert(Tensor x)
    {
        long t = x.size(0);
        var xa = x.dtype == AAll.dtype ? x : x.to(AAll.dtype);
        var h = linear(xa, AAll).view(t, Experts, Rank);                             // [N, n, r]
        if (h.dtype != ScalarType.Float32) h = h.to(ScalarType.Float32);
        return bmm(h.transpose(0, 1), Coordinates);                                  // [n, N, r]·[n, r, p] → [n, N, p]
    }

    /// <summary>The per-token expert outputs <c>M [N, d_out, n]</c>, column i = s·B_i(A_i x) (in <see cref="Basis"/>'s dtype).</summary>
    public Tensor ExpertOutputs(Tensor x)
    {
        var s = ExpertCoordinates(x);                                                // [N, n, p]
        return Basis.matmul(s.transpose(1, 2).to(Basis.dtype));                     // [N, d_out, n] = U·S
    }

    /// <summary>
    /// Up to this many rows (tokens × sibling modules) a CPU step mixes the experts in one native call
    /// (<see cref="OmoeKernel"/>) instead of about 20 libtorch calls.
    /// </summary>
    public const int MaxNativeRows = 64;

    /// <summary>The adapter's contribution for every token <c>x [N, d_in]</c> → <c>[N, d_out]</c> (in <see cref="Basis"/>'s dtype); <paramref name="selected"/> as <see cref="Route"/>.</summary>
    /// <param name="form">The tensor form (<see cref="Route"/>, <see cref="Combine"/>) or the native one; the same results.</param>
    public Tensor Delta(Tensor x, out Tensor? selected, MixtureForm form = MixtureForm.Auto)
    {
        Tensor v;                                                                    // [N, p]
        if (NativeMixtures.Runs(form, Router, x.size(0), MaxNativeRows))
        {
            var xf = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);  // [N, d_in]
            var (mixed, chosen) = OmoeKernel.Mix(linear(xf, Router), CoordinatesByExpert(x), 1, Experts, TopK, RescaleNorm, EpsValue); // [N, 1, p], [N, 1, K]?
            selected = chosen?.view(x.size(0), -1);                                  // [N, K]
            v = mixed.view(x.size(0), -1);
        }
        else
        {
            var (gates, chosen) = Route(x);                                          // [N, k], [N, K]?
            selected = chosen;
            v = Combine(ExpertCoordinates(x), gates, chosen, _eps, RescaleNorm);
        }
        return linear(v.dtype == Basis.dtype ? v : v.to(Basis.dtype), Basis);        // [N, d_out] = U·Σ_i c_i q^S_i
    }

    /// <summary>
    /// The mixture in the experts' coordinates for every token: the participating rows of <paramref name="coordinates"/>
    /// <c>S [N, n, p]</c> (all, or <paramref name="selected"/> <c>[N, K]</c>), orthonormalised in expert order
    /// (<see cref="Factor"/>), combined as <c>Σ_i c_i q^S_i</c> with <c>c_i = g_i · (‖E_i‖ or 1)</c>, ±1 from the sign fix and 0
    /// where guarded. The one place of OMoE's per-token maths: the per-group path (<see cref="Delta"/>) and the slot path
    /// (<c>OmoeSlotStep</c>, N = its S·L rows) both call it.
    /// </summary>
    /// <param name="gates"><c>[N, k]</c> float32 (a caller may fold a per-row scale into them).</param>
    /// <param name="eps">0-dim float32.</param>
    /// <returns><c>[N, p]</c> float32.</returns>
    internal static Tensor Combine(Tensor coordinates, Tensor gates, Tensor? selected, Tensor eps, bool rescaleNorm)
    {
        var (q, fix, norms, perm) = Factor(coordinates, selected, eps);              // [N, p, k], [N, k], [N, k], [N, k]
        var coefficients = (rescaleNorm ? gates.mul(norms) : gates).gather(1, perm).mul_(fix); // [N, k] g_i · (‖E_i‖ or 1), ±1, 0 where guarded, in q's column order
        return bmm(q, coefficients.unsqueeze(2)).squeeze(2);                        // [N, p] = Σ_i c_i q^S_i
    }

    /// <summary>
    /// Gram–Schmidt of the columns of <paramref name="m"/> <c>[N, d, k]</c> (float32) for every token at once. Columns
    /// shorter than ε are moved behind the others first (a stable order: expert order, guarded last), then a reduced
    /// QR; <c>Q ← Q · sign(diag R)</c>, and a column whose residual <c>|R_ii|</c> is below ε becomes zero.
    /// </summary>
    /// <param name="eps">0-dim float32.</param>
    /// <returns>Q <c>[N, d, k]</c> (orthonormal or zero columns), the norms ‖E‖ <c>[N, k]</c> and the expert index of each column <c>[N, k]</c>, all in Q's column order.</returns>
    public static (Tensor Q, Tensor Norms, Tensor Perm) Orthonormalise(Tensor m, Tensor eps)
    {
        var (q, fix, norms, perm) = Factor(m.transpose(1, 2), null, eps);
        return (q.mul(fix.unsqueeze(1)), norms.gather(1, perm), perm);
    }

    /// <summary>
    /// <see cref="Orthonormalise"/> of the rows of <paramref name="rows"/> <c>[N, n, d]</c> (all, or the
    /// <paramref name="selected"/> ones <c>[N, K]</c> in that order), with the column fix <c>sign(R_ii)</c> (0 where
    /// <c>|R_ii| &lt; ε</c>) returned instead of applied, so a caller that only needs <c>Σ c_i q_i</c> applies it to the k
    /// coefficients instead of to Q.
    /// </summary>
    /// <returns>Q <c>[N, d, k]</c>, the fix <c>[N, k]</c> in Q's column order; the norms ‖E‖ <c>[N, k]</c> in the
    /// participating experts' order, and <c>perm [N, k]</c>: Q's column j is participating expert perm[j].</returns>
    private static (Tensor Q, Tensor Fix, Tensor Norms, Tensor Perm) Factor(Tensor rows, Tensor? selected, Tensor eps)
    {
        long d = rows.size(2);
        var norms = rows.norm(dim: 2);                                               // [N, n] ‖E_i‖
        if (selected is not null) norms = norms.gather(1, selected);                 // [N, K]
        var (_, perm) = norms.lt(eps).sort(-1, descending: false, stable: true);     // [N, k] expert order, guarded columns last
        var columns = selected is null ? perm : selected.gather(1, perm);            // [N, k] the expert in each of Q's columns
        var sorted = rows.gather(1, columns.unsqueeze(2).expand(-1, -1, d)).transpose(1, 2); // [N, d, k]
        var (q, r) = linalg.qr(sorted);                                              // [N, d, k], [N, k, k]
        var diagonal = r.diagonal(0, -2, -1);                                        // [N, k] ±‖residual_i‖
        var fix = diagonal.sign().mul_(diagonal.abs().ge(eps));                      // [N, k] ±1, 0 where guarded
        return (q, fix, norms, perm);
    }

    /// <summary>
    /// Sibling modules of one adapter (the same n, r and p: projections of one input) stored side by side for one
    /// sequence of calls over all of them (<see cref="OmoeSiblings"/>): the routers, A and coordinates are copied into
    /// <paramref name="router"/> <c>[J·n, d_in]</c>, <paramref name="aAll"/> <c>[J·n·r, d_in]</c> and
    /// <paramref name="coordinates"/> <c>[J·n, r, p]</c>; the returned modules hold views of those, with the bases and
    /// ε taken over from <paramref name="modules"/>, whose other tensors are disposed.
    /// </summary>
    internal static OmoeModule[] SideBySide(IReadOnlyList<OmoeModule> modules, out Tensor router, out Tensor aAll, out Tensor coordinates)
    {
        var first = modules[0];
        if (modules.Any(m => !OmoeSiblings.Compatible(first, m)))
            throw new ArgumentException("sibling OMoE modules must share n, r, p and d_in", nameof(modules));
        using var inferenceOff = inference_mode(false);
        router = cat(modules.Select(m => m.Router).ToList(), 0).DetachFromDisposeScope();                // [J·n, d_in]
        aAll = cat(modules.Select(m => m.AAll).ToList(), 0).DetachFromDisposeScope();                    // [J·n·r, d_in]
        coordinates = cat(modules.Select(m => m.Coordinates).ToList(), 0).DetachFromDisposeScope();      // [J·n, r, p]
        int n = first.Experts, nr = first.Experts * first.Rank;
        var views = new OmoeModule[modules.Count];
        for (int j = 0; j < modules.Count; j++)
        {
            var m = modules[j];
            views[j] = new OmoeModule(n, m.Rank, m.TopK, m.RescaleNorm,
                router.narrow(0, (long)j * n, n).DetachFromDisposeScope(),                               // [n, d_in]
                aAll.narrow(0, (long)j * nr, nr).DetachFromDisposeScope(),                               // [n·r, d_in]
                m.Basis, coordinates.narrow(0, (long)j * n, n).DetachFromDisposeScope(), m._eps);           // [n, r, p]
            m.Router.Dispose();
            m.AAll.Dispose();
            m.Coordinates.Dispose();
        }
        return views;
    }

    /// <summary>0-dim float32: ε.</summary>
    internal Tensor Eps => _eps;

    /// <summary>ε on the host (read once at load), for the native mixture.</summary>
    internal float EpsValue { get; }

    /// <summary>A copy on <paramref name="device"/> (host tier → device tier).</summary>
    public OmoeModule To(Device device)
    {
        using var inferenceOff = inference_mode(false);
        Tensor Copy(Tensor t) => t.to(device, copy: true).DetachFromDisposeScope();
        return new OmoeModule(Experts, Rank, TopK, RescaleNorm, Copy(Router), Copy(AAll), Copy(Basis), Copy(Coordinates), Copy(_eps));
    }

    public void Dispose()
    {
        Router.Dispose();
        AAll.Dispose();
        Basis.Dispose();
        Coordinates.Dispose();
        _eps.Dispose();
    }
}
