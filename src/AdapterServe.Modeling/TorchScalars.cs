using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Modeling;

/// <summary>
/// The one place in <c>src/</c> that hands TorchSharp a <see cref="Scalar"/>. TorchSharp passes a Scalar's native handle
/// to libtorch without keeping the managed object alive, so a temporary (an implicit conversion, or the alpha = 1 that
/// <c>a + b</c>, <c>add(t)</c>, <c>add_(t)</c> build inside TorchSharp) can be finalized during the native call: a rare
/// libtorch <c>toFloat</c> assert that fails a whole step (../shared/docs/platform-notes.md). Every operation here
/// either uses a cached static Scalar or holds its Scalar (<c>using</c> + <see cref="GC.KeepAlive"/>) until the native
/// call has returned. Each one is the exact libtorch call the operator or overload it replaces makes, so results are
/// bit-identical. Use these instead of the operators and number overloads; ScalarGuardTests (the compiled IL of
/// every src/ assembly) enforces it.
/// </summary>
public static class TorchScalars
{
    /// <summary>alpha = 1 for <c>add</c>/<c>index_add_</c>, integral like the <c>1</c> TorchSharp's own overloads pass; lives for the process.</summary>
    public static readonly Scalar One = 1.ToScalar();

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

    /// <summary><c>a + value</c> (what <c>a + 0.5</c> and <c>0.5 + a</c> compute).</summary>
    public static Tensor Add(Tensor a, double value)
    {
        using var s = value.ToScalar();
        var result = a.add(s, One);
        GC.KeepAlive(s);
        return result;
    }

    /// <summary><c>a += value</c>, in place; returns <paramref name="a"/>.</summary>
    public static Tensor AddInPlace(Tensor a, double value)
    {
        using var s = value.ToScalar();
        var result = a.add_(s, One);
        GC.KeepAlive(s);
        return result;
    }

    /// <summary><c>a · value</c> (what <c>a * 0.5</c> and <c>0.5 * a</c> compute).</summary>
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

    /// <summary><c>a / value</c> (true division, as <c>a / 2.0</c>).</summary>
    public static Tensor Div(Tensor a, double value)
    {
        using var s = value.ToScalar();
        var result = a.div(s);
        GC.KeepAlive(s);
        return result;
    }

    /// <summary>Every element of <paramref name="a"/> := <paramref name="value"/>, in place; returns <paramref name="a"/>.</summary>
    public static Tensor FillInPlace(Tensor a, double value)
    {
        using var s = value.ToScalar();
        var result = a.fill_(s);
        GC.KeepAlive(s);
        return result;
    }

    /// <summary><c>y[index] += source</c> along <paramref name="dim"/>, in place; returns <paramref name="y"/>.</summary>
    public static Tensor IndexAddInPlace(Tensor y, long dim, Tensor index, Tensor source) => y.index_add_(dim, index, source, One);
}
