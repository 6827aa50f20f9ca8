using System.Runtime.InteropServices;
using AdapterServe.Adapters.Kinds.Mixtures;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Omoe;

/// <summary>
/// OMoE's per-token mixture in ONE native call on the CPU (<c>Native/omoe_mix.c</c>, in the mixture kinds' native
/// library, <see cref="NativeMixtures"/>): what <see cref="OmoeModule.Gate"/> and <see cref="OmoeModule.Combine"/> do
/// in about 20 small libtorch calls (softmax, top-K, the norms, the guard's order, the batched QR, the sign fix, the
/// gated sum), between the same GEMMs: the router's logits and the experts' coordinates before it, the basis after it.
/// Gram–Schmidt runs in double precision per row, in expert order, a residual shorter than ε giving no direction.
/// </summary>
internal static unsafe class OmoeKernel
{
    /// <summary>
    /// The mixture of G groups of one configuration over T tokens each (one module: G = 1; siblings side by side; the
    /// slots of a step): <c>v [rows, p]</c> (float32, <c>y = U·v</c>) and, with top_k, the selected expert ids
    /// <c>[rows, K]</c> in expert order (else null). Rows are (token, group) pairs, token-major (row t·G + g) or, with
    /// <paramref name="groupMajor"/>, group-major (row g·T + t); the results are shaped <c>[T, G, ·]</c> or <c>[G, T, ·]</c>.
    /// </summary>
    /// <param name="logits">The routers' logits, one row of n per (token, group) in the rows' order, float32 on the CPU.</param>
    /// <param name="coordinates">The experts' outputs in their coordinates, <c>[G·n, T, p]</c> float32 (the batched GEMM's own layout).</param>
    /// <param name="scale">A factor per row, in the rows' order (the slot path's adapter scales, 0 on padding rows), or null.</param>
    /// <param name="eps">ε of the guard.</param>
    public static (Tensor Mixed, Tensor? Selected) Mix(Tensor logits, Tensor coordinates, int groups, int experts, int? topK, bool rescaleNorm, float eps,
        bool groupMajor = false, Tensor? scale = null)
    {
        long tokens = coordinates.size(1), width = coordinates.size(2);
        long[] rows = groupMajor ? [groups, tokens] : [tokens, groups];
        if (logits.NumberOfElements != tokens * groups * experts || coordinates.size(0) != (long)groups * experts
            || (scale is not null && scale.NumberOfElements != tokens * groups))
            throw new ArgumentException($"logits [{string.Join(", ", logits.shape)}] and coordinates [{string.Join(", ", coordinates.shape)}] do not fit {groups} group(s) of {experts} experts");
        var mixed = empty([.. rows, width], ScalarType.Float32);                                    // [T, G, p] or [G, T, p]
        var selected = topK is { } k ? empty([.. rows, k], ScalarType.Int64) : null;                // [T, G, K] or [G, T, K]
        var kept = new List<Tensor>();
        var pass = new Pass
        {
            Tokens = checked((int)tokens), Groups = groups, Experts = experts, TopK = topK ?? 0, Width = checked((int)width),
            RescaleNorm = rescaleNorm ? 1 : 0, GroupMajor = groupMajor ? 1 : 0, Eps = eps,
            Logits = NativeMixtures.Data(logits, kept), Coordinates = NativeMixtures.Data(coordinates, kept),
            Scale = NativeMixtures.Data(scale, kept), Out = NativeMixtures.Data(mixed, kept), Selected = NativeMixtures.Data(selected, kept),
        };
        int status = Run(&pass);
        GC.KeepAlive(kept);
        if (status != 0) throw new InvalidOperationException($"the native OMoE mixture failed ({status}: {(status == -1 ? "no scratch memory" : "sizes out of range")})");
        return (mixed, selected);
    }

    /// <summary>The layout of <c>omoe_pass</c> in <c>omoe_mix.c</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Pass
    {
        public int Tokens, Groups, Experts, TopK, Width, RescaleNorm, GroupMajor;
        public float Eps;
        public IntPtr Logits, Coordinates, Scale, Out, Selected;
    }

    [DllImport(NativeMixtures.Library, EntryPoint = "adapterserve_omoe_mix")]
    private static extern int Run(Pass* pass);
}
