using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Modeling;

/// <summary>
/// The one place in <c>src/</c> that hands TorchSharp a <see cref="Scalar"/>. TorchSharp passes a Scalar's native handle
/// to libtorch without keeping the managed object alive, so a temporary (an implicit conversion, or the alpha = 1 that
/// <c>a + b</c>, <c>add(t)</c>, <c>sub(t)</c> build inside TorchSharp) can be finalized during the native call: a rare
/// libtorch <c>toFloat</c> assert that fails a whole step (../shared/docs/platform-notes.md). Every operation here
/// either uses a cached static Scalar or holds its Scalar until the native call has returned.
/// Use these instead of the operators and number overloads; a test of the compiled IL enforces it.
/// </summary>
public static class TorchScalars
{
    /// <summary>alpha = 1 for <c>add</c>/<c>sub</c>; lives for the process.</summary>
    public static readonly Scalar One = 1.0.ToScalar();

    /// <summary><c>a + b</c>.</summary>
    public static Tensor Add(Tensor a, Tensor b) => a.add(b, One);

    /// <summary><c>a += b</c>, in place; returns <paramref name="a"/>.</summary>
    public static Tensor AddInPlace(Tensor a, Tensor b) => a.add_(b, One);

    /// <summary><c>a + alpha · b</c>.</summary>
    public static Tensor Add(Tensor a, Tensor b, double alpha)
    {
        using var s = alpha.ToScalar();
        var result = a.add(b, s);
        GC.KeepAlive(s);
        return result;
    }

    /// <summary><c>a · value</c>.</summary>
    public static Tensor Mul(Tensor a, double value)
    {
        using var s = value.ToScalar();
        var result = a.mul(s);
        GC.KeepAlive(s);
        return result;
    }

    /// <summary><c>a ·= value</c>, in place; returns <paramref name="a"/>.</summary>
    public static Tensor MulInPlace(Tensor a, double value)
    {
        using var s = value.ToScalar();
        var result = a.mul_(s);
        GC.KeepAlive(s);
        return result;
    }
}
