using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Kinds.Kronecker;

/// <summary>
/// The served form of one adapted projection of a Kronecker adapter (LoKr: one term; MoKA: one term per component):
/// <c>ΔW = Σ_i c_i · kron(A_i, B_i)</c>, never materialised. Per token, with x viewed as <c>X [Na, Nb]</c>, a term adds
/// <c>c_i · A_i X B_iᵀ</c> (<c>[Ma, Mb]</c>, read row-major as <c>[d_out]</c>). Components of equal shape are one
/// <see cref="KroneckerTerm"/> (stacked at load), so a projection costs a fixed number of native calls per distinct
/// shape, whatever the number of components. Every scalar coefficient (LoKr's alpha/r, MoKA's softmax(g)·scaling) is
/// folded into the A factors at load. Owns its tensors.
/// </summary>
public sealed class KroneckerWeights : IDisposable
{
    private KroneckerWeights(int layer, Projection projection, long outFeatures, long inFeatures, KroneckerTerm[] terms)
    {
        Layer = layer;
        Projection = projection;
        OutFeatures = outFeatures;
        InFeatures = inFeatures;
        Terms = terms;
        Bytes = terms.Sum(t => t.Bytes);
    }

    public int Layer { get; }
    public Projection Projection { get; }
    public long OutFeatures { get; }
    public long InFeatures { get; }
    /// <summary>One term per distinct component shape, in order of first appearance.</summary>
    public IReadOnlyList<KroneckerTerm> Terms { get; }
    /// <summary>Bytes of the tensors held (factors as served: low-rank factors multiplied out, components stacked).</summary>
    public long Bytes { get; }

    /// <summary>
    /// Builds the served factors from <c>(A_i [Ma_i, Na_i], B_i [Mb_i, Nb_i], c_i)</c>: computed in float32 on the
    /// factors' device, stored in <paramref name="dtype"/> on <paramref name="device"/>. Call outside inference_mode.
    /// </summary>
    public static KroneckerWeights Build(int layer, Projection projection, IReadOnlyList<(Tensor A, Tensor B, double Coefficient)> components,
        Device device, ScalarType dtype)
    {
        if (components.Count == 0) throw new ArgumentException("a Kronecker module has at least one component", nameof(components));
        var shapes = components.Select(c => ShapeOf(c.A, c.B)).ToList();
        long dOut = shapes[0].OutFeatures, dIn = shapes[0].InFeatures;
        if (shapes.Any(s => s.OutFeatures != dOut || s.InFeatures != dIn))
            throw new ArgumentException($"components cover different layer shapes: {string.Join(", ", shapes)}", nameof(components));

        var terms = new List<KroneckerTerm>();
        try
        {
            foreach (var shape in shapes.Distinct())
            {
                var members = Enumerable.Range(0, components.Count).Where(i => shapes[i] == shape).Select(i => components[i]).ToList();
                terms.Add(KroneckerTerm.Build(shape, members, device, dtype));
            }
        }
        catch
        {
            foreach (var t in terms) t.Dispose();
            throw;
        }
        return new KroneckerWeights(layer, projection, dOut, dIn, [.. terms]);
    }

    /// <summary><c>x ΔWᵀ</c>: <c>[n, d_in]</c> → <c>[n, d_out]</c> in this module's dtype (x is cast when it differs).</summary>
    public Tensor Delta(Tensor x)
    {
        using var scope = NewDisposeScope();
        long n = x.size(0);
        Tensor? sum = null;                                                        // [n, Ma, Mb] of the first term
        foreach (var term in Terms)
        {
            var y = term.Apply(x);                                                 // [n, Ma, Mb]
            sum = sum is null ? y : TorchScalars.Add(sum.reshape(n, OutFeatures), y.reshape(n, OutFeatures));
        }
        return sum!.reshape(n, OutFeatures).MoveToOuterDisposeScope();             // [n, d_out]
    }

    /// <summary>
    /// <c>rows += scale · x ΔWᵀ</c> in place, for <paramref name="rows"/> a contiguous <c>[n, d_out]</c> block of the
    /// step's output (a narrow of it) and <paramref name="x"/> the matching <c>[n, d_in]</c> inputs. Each term's
    /// <c>[n, Ma, Mb]</c> result is added through a view of the rows, without reshaping it.
    /// </summary>
    public void AddTo(Tensor x, Tensor rows, float scale = 1f)
    {
        using var scope = NewDisposeScope();
        long n = x.size(0);
        foreach (var term in Terms)
        {
            var y = term.Apply(x);                                                 // [n, Ma, Mb]
            if (scale != 1f) y = TorchScalars.MulInPlace(y, scale);
            if (y.dtype != rows.dtype) y = y.to(rows.dtype);
            TorchScalars.AddInPlace(rows.view(n, term.Shape.Ma, term.Shape.Mb), y);  // [n, d_out] seen as [n, Ma, Mb]
        }
    }

    /// <summary>A copy on <paramref name="device"/> (same dtype).</summary>
    public KroneckerWeights To(Device device)
    {
        var copies = new List<KroneckerTerm>();
        try
        {
            foreach (var t in Terms) copies.Add(t.To(device));
        }
        catch
        {
            foreach (var t in copies) t.Dispose();
            throw;
        }
        return new KroneckerWeights(Layer, Projection, OutFeatures, InFeatures, [.. copies]);
    }

    public void Dispose()
    {
        foreach (var t in Terms) t.Dispose();
    }

    private static KroneckerShape ShapeOf(Tensor a, Tensor b)
    {
        if (a.dim() != 2 || b.dim() != 2)
            throw new ArgumentException($"Kronecker factors must be matrices, got [{string.Join(", ", a.shape)}] and [{string.Join(", ", b.shape)}]");
        return new KroneckerShape(checked((int)a.size(0)), checked((int)a.size(1)), checked((int)b.size(0)), checked((int)b.size(1)));
    }
}

/// <summary>
/// The k components of one projection that share a shape <c>[Ma, Na] ⊗ [Mb, Nb]</c>, stacked so that
/// <c>Σ_i A_i X B_iᵀ</c> for all tokens is two GEMMs (one of them batched per token, or both with the tokens side by
/// side when the per-token product is narrow, see <see cref="StacksTokens"/>) and at most two reorder copies,
/// whatever k and the number of tokens, in the cheaper order chosen at load:
/// <list type="bullet">
/// <item>left first: <c>Left [Ma·k, Na]</c> (row <c>a·k + i</c> = <c>A_i[a]</c>), <c>Right [Mb, k·Nb]</c> (column
/// <c>i·Nb + d</c> = <c>B_i[:, d]</c>); <c>U = Left @ X</c> is <c>[n, Ma, k·Nb]</c> without any reorder, then
/// <c>Y = U Rightᵀ</c>.</item>
/// <item>right first: <c>Right [k·Mb, Nb]</c> (row <c>i·Mb + b</c>), <c>Left [Ma, k·Na]</c> (column <c>i·Na + c</c>);
/// <c>T = X Rightᵀ</c> is <c>[n, Na, k, Mb]</c>, reordered to <c>[n, k·Na, Mb]</c>, then <c>Y = Left @ T</c>.</item>
/// </list>
/// </summary>
public sealed class KroneckerTerm : IDisposable
{
    private KroneckerTerm(KroneckerShape shape, int count, bool leftFirst, Tensor left, Tensor right)
    {
        Shape = shape;
        Count = count;
        LeftFirst = leftFirst;
        Left = left;
        Right = right;
    }

    public KroneckerShape Shape { get; }
    /// <summary>Components stacked in this term (k).</summary>
    public int Count { get; }
    /// <summary>True: x is contracted with the A factors first (the cheaper order for this shape).</summary>
    public bool LeftFirst { get; }
    /// <summary>Stacked A factors with the coefficients folded in: <c>[Ma·k, Na]</c> left first, <c>[Ma, k·Na]</c> right first.</summary>
    public Tensor Left { get; }
    /// <summary>Stacked B factors: <c>[Mb, k·Nb]</c> left first, <c>[k·Mb, Nb]</c> right first.</summary>
    public Tensor Right { get; }
    /// <summary>
    /// True: with several tokens, the per-token products are one GEMM with the tokens side by side in its columns
    /// (<see cref="Apply"/>). Chosen when the per-token product is narrow (the width of its result, Nb left first or
    /// Mb right first, below <see cref="NarrowProduct"/>), where a batched GEMM of narrow matrices is slow: on the
    /// bench machine, for 16 tokens, MoKA's [4, 144] ⊗ [144, 4] term takes 26 µs this way against 47 µs batched,
    /// while LoKr's [24, 24] ⊗ [24, 24] takes 39 µs against 24 µs.
    /// </summary>
    public bool StacksTokens => (LeftFirst ? Shape.Nb : Shape.Mb) < NarrowProduct;

    /// <summary>Result width below which a per-token product counts as narrow (see <see cref="StacksTokens"/>).</summary>
    internal const int NarrowProduct = 16;

    public long Bytes => Left.NumberOfElements * Left.ElementSize + Right.NumberOfElements * Right.ElementSize;

    internal static KroneckerTerm Build(KroneckerShape shape, IReadOnlyList<(Tensor A, Tensor B, double Coefficient)> members, Device device, ScalarType dtype)
    {
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        int k = members.Count;
        var a = stack(members.Select(m => TorchScalars.Mul(m.A.to(ScalarType.Float32), m.Coefficient)).ToArray(), 1);  // [Ma, k, Na]
        var b = members.Select(m => m.B.to(ScalarType.Float32, a.device)).ToArray();
        // With k > 1 the right-first order pays one reorder copy of [n, Na, k, Mb]: prefer left first on a tie.
        bool leftFirst = shape.LeftFirstCost <= shape.RightFirstCost;
        Tensor left, right;
        if (leftFirst)
        {
            left = a.reshape(shape.Ma * k, shape.Na);                              // [Ma·k, Na], row a·k + i
            right = stack(b, 1).reshape(shape.Mb, k * shape.Nb);                   // [Mb, k·Nb], column i·Nb + d
        }
        else
        {
            left = a.reshape(shape.Ma, k * shape.Na);                              // [Ma, k·Na], column i·Na + c
            right = stack(b, 0).reshape(k * shape.Mb, shape.Nb);                   // [k·Mb, Nb], row i·Mb + b
        }
        return new KroneckerTerm(shape, k, leftFirst, Keep(left, device, dtype), Keep(right, device, dtype));
    }

    /// <summary><c>Σ_i A_i X B_iᵀ</c> per token: x <c>[n, Na·Nb]</c> → <c>[n, Ma, Mb]</c> (cast to the factors' dtype).</summary>
    public Tensor Apply(Tensor x)
    {
        long n = x.size(0);
        var (ma, na, mb, nb) = (Shape.Ma, Shape.Na, Shape.Mb, Shape.Nb);
        if (x.dtype != Left.dtype) x = x.to(Left.dtype);
        var xs = x.reshape(n, na, nb);                                             // [n, Na, Nb]
        if (n > 1 && StacksTokens)
        {
            // The tokens side by side: one GEMM per factor, with the reorder copies between them.
            if (LeftFirst)
            {
                var xt = xs.transpose(0, 1).reshape(na, n * nb);                       // [Na, n·Nb]
                var u = Left.mm(xt).view(ma, Count, n, nb);                            // [Ma·k, n·Nb] seen as [Ma, k, n, Nb]
                var un = u.permute(2, 0, 1, 3).reshape(n * ma, (long)Count * nb);      // [n·Ma, k·Nb]: column i·Nb + d
                return linear(un, Right).view(n, ma, mb);                              // [n, Ma, Mb]
            }
            var tr = linear(xs.reshape(n * na, nb), Right).view(n, na, Count, mb);     // [n, Na, k, Mb]
            var tk = tr.permute(2, 1, 0, 3).reshape((long)Count * na, n * mb);        // [k·Na, n·Mb]: row i·Na + c
            return Left.mm(tk).view(ma, n, mb).permute(1, 0, 2);                       // [n, Ma, Mb], a view
        }
        // The per-token product with a shared factor is a bmm over an expanded (stride-0) view of it: one native
        // batched GEMM, where matmul's broadcasting would first fold and copy.
        if (LeftFirst)
        {
            var u = Left.expand(n, Left.size(0), na).bmm(xs);                     // [n, Ma·k, Nb], contiguous
            if (Count > 1) u = u.view(n, ma, (long)Count * nb);                    // [n, Ma, k·Nb]: row a·k + i, column d
            return linear(u, Right);                                               // [n, Ma, Mb]
        }
        var t = linear(xs, Right);                                                 // [n, Na, k·Mb]
        if (Count > 1) t = t.view(n, na, Count, mb).permute(0, 2, 1, 3).reshape(n, (long)Count * na, mb); // [n, k·Na, Mb]
        return Left.expand(n, ma, Left.size(1)).bmm(t);                           // [n, Ma, Mb]
    }

    internal KroneckerTerm To(Device device)
    {
        using var inferenceOff = inference_mode(false);
        return new KroneckerTerm(Shape, Count, LeftFirst,
            Left.to(Left.dtype, device, copy: true).DetachFromDisposeScope(), Right.to(Right.dtype, device, copy: true).DetachFromDisposeScope());
    }

    public void Dispose()
    {
        Left.Dispose();
        Right.Dispose();
    }

    private static Tensor Keep(Tensor t, Device device, ScalarType dtype) => t.to(dtype, device, copy: true).contiguous().DetachFromDisposeScope();
}
