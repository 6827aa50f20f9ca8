using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>
/// The served weights of one adapted projection of one layer: a low-rank delta <c>ΔW = B·A</c> applied unmerged as
/// <c>y += (x Aᵀ) Bᵀ</c>, plus the optional LoRA bias and DoRA magnitude.
/// <para>
/// Scaling convention: the file's scaling <c>s</c> (alpha/r or alpha/√r, patterns applied) is FOLDED into
/// <see cref="B"/> and <see cref="Bias"/> at load (PEFT scales the lora_B bias too), so <c>ΔW = B·A</c> exactly and
/// a request's scale multiplies the whole delta. <see cref="Scaling"/> only reports <c>s</c>.
/// KaSA arrives here already converted into a plain low-rank delta on the frozen base (<see cref="KasaDelta"/>),
/// so <see cref="Rank"/> is the served rank (r for LoRA/DoRA, removed components + r for KaSA).
/// </para>
/// Tensors live on one device in one dtype and are owned by this object (never by a dispose scope).
/// </summary>
public sealed class LoraWeights : IDisposable
{
    // DoRA's m / ‖W0 + scale·ΔW‖_row per request scale; scale 1 is filled at load, others on first use (engine thread).
    private readonly Dictionary<float, Tensor> _doraRowScales = [];

    internal LoraWeights(int layer, Projection projection, double scaling, Tensor a, Tensor b, Tensor? bias, Tensor? magnitude, Tensor? doraRowScale,
        SharedStorage? storage = null)
    {
        Layer = layer;
        Projection = projection;
        Scaling = scaling;
        A = a;
        // Stored as Bᵀ [R, d_out], row-major: the right operand of y.addmm_(xa, Bᵀ) read in its natural order (at one
        // token this GEMV takes 2.1 µs against 4.6 µs on the transposed view of B [d_out, R], 1536 × 16). B is its view.
        var view = b.t();
        BT = view.contiguous().DetachFromDisposeScope();                       // view itself when b was already column-major
        if (!ReferenceEquals(BT, view)) view.Dispose();
        b.Dispose();
        B = BT.t().DetachFromDisposeScope();
        Bias = bias;
        Magnitude = magnitude;
        if (doraRowScale is not null) _doraRowScales[1f] = doraRowScale;
        Storage = storage;
        Bytes = storage is not null ? 0 : TensorBytes(a) + TensorBytes(BT) + TensorBytes(bias) + TensorBytes(magnitude) + TensorBytes(doraRowScale);
    }

    /// <summary>
    /// A plain module whose tensors are views of <paramref name="block"/> (a mixer's expert stack, see
    /// <see cref="SharedLoraWeights"/>): no copy; its ownership of the view handles passes here.
    /// </summary>
    internal static LoraWeights FromShared(int layer, Projection projection, double scaling, SharedLoraBlock block)
    {
        var b = block.BT.t().DetachFromDisposeScope();                         // [d_out, r], a view
        block.BT.Dispose();
        return new(layer, projection, scaling, block.A, b, block.Bias, null, null, block.Storage);
    }

    public int Layer { get; }
    public Projection Projection { get; }
    /// <summary>The adapter file's <c>s</c> for this module; already folded into <see cref="B"/>.</summary>
    public double Scaling { get; }
    /// <summary>Down projection <c>[R, d_in]</c>.</summary>
    public Tensor A { get; }
    /// <summary>Up projection with the scaling folded in, <c>[d_out, R]</c> (a view of <see cref="BT"/>).</summary>
    public Tensor B { get; }
    /// <summary><see cref="B"/>ᵀ <c>[R, d_out]</c>, contiguous: the stored tensor (<see cref="B"/> is its view), the right operand of <c>y.addmm_(xa, Bᵀ)</c>.</summary>
    public Tensor BT { get; }
    /// <summary><c>s · lora_B.bias</c>, <c>[d_out]</c>, when the adapter was trained with <c>lora_bias</c>.</summary>
    public Tensor? Bias { get; }
    /// <summary>DoRA magnitude <c>m</c>, <c>[d_out]</c>.</summary>
    public Tensor? Magnitude { get; }

    public int Rank => (int)A.size(0);
    public int InFeatures => (int)A.size(1);
    public int OutFeatures => (int)B.size(0);
    public bool IsDora => Magnitude is not null;
    /// <summary>Bytes of the tensors loaded with the module (A, B, bias, magnitude and DoRA's scale-1 row factor); 0 when they are views of <see cref="Storage"/>.</summary>
    public long Bytes { get; }
    /// <summary>The storage its tensors are views of when another adapter holds them (<see cref="SharedLoraWeights"/>), else null.</summary>
    public SharedStorage? Storage { get; }

    /// <summary>
    /// DoRA's per-output-row factor <c>m / ‖W0 + scale·B·A‖_row</c> (<c>[d_out]</c>, this module's dtype and device),
    /// computed in float32 once per (module, scale) and cached. PEFT's <c>scale_layer</c> scales DoRA's delta and its
    /// norm together, so a request scale other than 1 gets its own norm.
    /// </summary>
    public Tensor DoraRowScale(float scale, Tensor baseWeight)
    {
        if (Magnitude is null) throw new InvalidOperationException($"{Projection.ShortName()} of layer {Layer} is not a DoRA module");
        if (_doraRowScales.TryGetValue(scale, out var cached)) return cached;
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        var rowScale = ComputeDoraRowScale(Magnitude, A, B, scale, baseWeight).to(A.dtype, A.device); // [d_out]
        _doraRowScales[scale] = rowScale.DetachFromDisposeScope();
        return rowScale;
    }

    /// <summary><c>m / ‖W0 + scale·B·A‖_row</c> in float32 on the base weight's device (B has s folded in).</summary>
    internal static Tensor ComputeDoraRowScale(Tensor magnitude, Tensor a, Tensor b, float scale, Tensor baseWeight)
    {
        using var scope = NewDisposeScope();
        var dev = baseWeight.device;
        var w0 = baseWeight.to(ScalarType.Float32);                                                            // [d_out, d_in]
        var delta = b.to(ScalarType.Float32, dev).matmul(a.to(ScalarType.Float32, dev));                       // [d_out, d_in]
        var merged = TorchScalars.Add(w0, delta, scale);                                                       // W' = W0 + scale·ΔW
        var rowNorm = linalg.norm(merged, 2.0, [1]);                                                           // [d_out]; linalg_vector_norm(ord 2) natively, without vector_norm's Scalar temporary
        return magnitude.to(ScalarType.Float32, dev).div(rowNorm).MoveToOuterDisposeScope();                  // [d_out]
    }

    /// <summary>A copy of this module on <paramref name="device"/> (DoRA's scale-1 factor included).</summary>
    public LoraWeights To(Device device)
    {
        using var inferenceOff = inference_mode(false);
        Tensor? Copy(Tensor? t) => t?.to(t.dtype, device, copy: true).DetachFromDisposeScope();
        return new LoraWeights(Layer, Projection, Scaling, Copy(A)!, Copy(B)!, Copy(Bias), Copy(Magnitude),
            _doraRowScales.TryGetValue(1f, out var unit) ? Copy(unit) : null);
    }

    public void Dispose()
    {
        A.Dispose();
        BT.Dispose();
        B.Dispose();
        Bias?.Dispose();
        Magnitude?.Dispose();
        foreach (var t in _doraRowScales.Values) t.Dispose();
        _doraRowScales.Clear();
    }

    internal static long TensorBytes(Tensor? t) => t is null ? 0 : t.NumberOfElements * t.ElementSize;
}
