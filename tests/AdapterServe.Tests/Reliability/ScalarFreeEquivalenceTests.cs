using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Reliability;

/// <summary>The Scalar-safe replacements compute exactly what the calls they replaced computed (issue 8 asks for bit-identical outputs).</summary>
public class ScalarFreeEquivalenceTests
{
    [Fact]
    public void Dora_row_norm_through_linalg_norm_equals_vector_norm_bit_for_bit()
    {
        using var scope = NewDisposeScope();
        var merged = randn([40, 16], generator: new Generator(5)); // [d_out, d_in]
        // What LoraWeights used. Its temporary ord Scalar is the very crash issue 8 removed (a GC during the call frees
        // it: "Unknown scalar type", seen once in a fresh-clone run), so the reference runs where no GC can happen.
        Tensor replaced;
        Assert.True(GC.TryStartNoGCRegion(32 << 20), "could not suspend the GC for the reference call");   // room for the tests running beside it
        try { replaced = linalg.vector_norm(merged, 2, [1]); }
        finally
        {
            if (System.Runtime.GCSettings.LatencyMode == System.Runtime.GCLatencyMode.NoGCRegion) GC.EndNoGCRegion();
        }
        var used = linalg.norm(merged, 2.0, [1]);                 // what it uses now
        Assert.True(equal(replaced, used).all().item<bool>(), "row norms differ");
    }

    [Fact]
    public void TorchScalars_equal_the_operators_they_replace_bit_for_bit()
    {
        using var scope = NewDisposeScope();
        var g = new Generator(9);
        var a = randn([8, 16], generator: g);
        var b = randn([8, 16], generator: g);
        Assert.True(equal(a + b, TorchScalars.Add(a, b)).all().item<bool>(), "a + b");
        Assert.True(equal(a.add(b, 0.37f), TorchScalars.Add(a, b, 0.37f)).all().item<bool>(), "add(b, alpha)");
        Assert.True(equal(1 + 0.1 * a, TorchScalars.Add(TorchScalars.Mul(a, 0.1), 1.0)).all().item<bool>(), "1 + 0.1·a");
        Assert.True(equal(a / Math.Sqrt(16), TorchScalars.Div(a, Math.Sqrt(16))).all().item<bool>(), "a / √16");
        Assert.True(equal(a.clone().mul_(0.75f), TorchScalars.MulInPlace(a.clone(), 0.75f)).all().item<bool>(), "a ·= 0.75");
        var index = tensor(new long[] { 1, 5, 6 });
        var rows = b.narrow(0, 0, 3);
        Assert.True(equal(a.clone().index_add_(0, index, rows, 1.0f), TorchScalars.IndexAddInPlace(a.clone(), 0, index, rows)).all().item<bool>(), "index_add_");
    }
}
