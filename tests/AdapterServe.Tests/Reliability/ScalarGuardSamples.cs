using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Reliability;

/// <summary>
/// Deliberately wrong code for <see cref="ScalarGuardTests"/>: the scanner must flag exactly the calls in
/// <see cref="Bad"/> and <see cref="BadMul"/> and nothing in <see cref="Good"/>. Never called.
/// </summary>
internal static class ScalarGuardSamples
{
    /// <summary><c>a + b</c>: TorchSharp's operator builds alpha = 1 as a temporary Scalar.</summary>
    internal static Tensor Bad(Tensor a, Tensor b) => a + b;

    /// <summary><c>t.mul(2.0)</c>: an implicit double → Scalar conversion passed straight to native code.</summary>
    internal static Tensor BadMul(Tensor t) => t.mul(2.0);

    /// <summary>The same maths through the sanctioned helper and Scalar-free tensor-tensor calls.</summary>
    internal static Tensor Good(Tensor a, Tensor b) => TorchScalars.Mul(TorchScalars.Add(a.mul(b), a.matmul(b)), 2.0);
}
