using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>
/// KaSA (methods.md §2.2) served on the frozen shared base. KaSA's own forward is
/// <c>y = W_world x + s·B(σ ⊙ A x)</c> where <c>W_world</c> is W0 without its smallest singular triplets. Since the base
/// must stay shared, the adapter becomes one low-rank delta on W0, converted once at load:
/// <c>ΔW = −U_r S_r V_rᵀ + s·B diag(σ) A = [−U_r S_r | s·B diag(σ)] · [V_rᵀ ; A]</c>.
/// </summary>
public static class KasaDelta
{
    /// <summary>PEFT's rule (default): keep <c>k − r</c> singular components, <c>k = min(d_out, d_in)</c>.</summary>
    public const string PeftTruncation = "peft";
    /// <summary>The official repository's rule: keep <c>d_in − r</c> components (no truncation at all when that is ≥ k).</summary>
    public const string OfficialTruncation = "official";

    /// <summary>How many of the smallest singular triplets of a <c>[d_out, d_in]</c> base weight KaSA of rank r removes.</summary>
    public static int RemovedComponents(long dOut, long dIn, int rank, string truncation)
    {
        long k = Math.Min(dOut, dIn);
        long kept = truncation switch
        {
            PeftTruncation => k - rank,
            OfficialTruncation => dIn - rank,
            _ => throw new AdapterValidationException($"KaSA truncation '{truncation}' is not supported (supported: '{PeftTruncation}', '{OfficialTruncation}')"),
        };
        // Python slicing U[:, :kept] clamps: kept ≥ k keeps everything.
        return (int)(k - Math.Clamp(kept, 0, k));
    }

    /// <summary>
    /// The served factors <c>(A', B')</c> with <c>B'·A' = −U_r S_r V_rᵀ + s·B diag(σ) A</c>, in float32 on the base
    /// weight's device. <c>U, S, Vh = linalg.svd(W0.float(), full_matrices: false)</c>.
    /// </summary>
    /// <param name="baseWeight">W0 <c>[d_out, d_in]</c>.</param>
    /// <param name="a">lora_A <c>[r, d_in]</c>.</param>
    /// <param name="b">lora_B <c>[d_out, r]</c> (without scaling).</param>
    /// <param name="diag">lora_diag σ <c>[r]</c>.</param>
    public static (Tensor A, Tensor B) Build(Tensor baseWeight, Tensor a, Tensor b, Tensor diag, double scaling, string truncation)
    {
        using var scope = NewDisposeScope();
        var dev = baseWeight.device;
        long dOut = baseWeight.size(0), dIn = baseWeight.size(1);
        int rank = (int)a.size(0);
        int removed = RemovedComponents(dOut, dIn, rank, truncation);

        var adapterB = TorchScalars.Mul(b.to(ScalarType.Float32, dev).mul(diag.to(ScalarType.Float32, dev)), scaling); // [d_out, r] = s·B diag(σ)
        var adapterA = a.to(ScalarType.Float32, dev);                                                    // [r, d_in]
        if (removed == 0)
            return (adapterA.MoveToOuterDisposeScope(), adapterB.MoveToOuterDisposeScope());

        var (u, s, vh) = linalg.svd(baseWeight.to(ScalarType.Float32), fullMatrices: false);              // [d_out, k], [k] descending, [k, d_in]
        long k = s.size(0);
        var uSmall = u.narrow(1, k - removed, removed);                                                  // [d_out, removed]
        var sSmall = s.narrow(0, k - removed, removed);                                                  // [removed]
        var vhSmall = vh.narrow(0, k - removed, removed);                                                // [removed, d_in]

        var servedA = cat([vhSmall, adapterA], 0);                                                       // [removed + r, d_in] = [V_rᵀ ; A]
        var servedB = cat([uSmall.mul(sSmall).neg(), adapterB], 1);                                      // [d_out, removed + r] = [−U_r S_r | s·B diag(σ)]
        return (servedA.contiguous().MoveToOuterDisposeScope(), servedB.contiguous().MoveToOuterDisposeScope());
    }
}
