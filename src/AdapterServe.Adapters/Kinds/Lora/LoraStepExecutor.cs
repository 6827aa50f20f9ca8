using AdapterServe.Modeling;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters.Kinds.Lora;

/// <summary>
/// The LoRA family's share of one step: per adapted projection, each (adapter, scale) group costs one gather of its
/// rows (a narrow when they are contiguous) and two small GEMMs <c>(x_g Aᵀ) Bᵀ</c>, added in place into the step's
/// output rows. DoRA groups (an adapter alone on its sequences) have their rows rescaled instead:
/// <c>y = (m / ‖W0 + scale·ΔW‖_row) ⊙ (x W0ᵀ + scale·x ΔWᵀ)</c>.
/// </summary>
internal sealed class LoraStepExecutor(IReadOnlyList<AdapterTokenGroup> groups) : IAdapterStepExecutor
{
    private readonly (AdapterTokenGroup Group, LoraModules Modules)[] _groups = [.. groups.Select(g => (g, g.Adapter.LoraModules()))];

    public void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight)
    {
        // Every TorchSharp call costs tens of microseconds on the CPU and this runs for every adapter group of every
        // projection of every step: keep the calls per group to the minimum (views, two linears, one in-place add).
        foreach (var (g, modules) in _groups)
        {
            if (modules.Module(layer, projection) is not { } w) continue;
            if (w.InFeatures != x.shape[1] || w.OutFeatures != y.shape[1])
                throw new InvalidOperationException(
                    $"{g.Adapter} has {projection.ShortName()} of layer {layer} as [{w.OutFeatures}, {w.InFeatures}], the step has [{y.shape[1]}, {x.shape[1]}]");

            var xg = g.Rows(x);                                                      // [n_g, d_in]
            if (xg.dtype != w.A.dtype) xg = xg.to(w.A.dtype);
            var delta = linear(linear(xg, w.A), w.B);                                // [n_g, R] → [n_g, d_out]
            if (w.Bias is not null) delta = TorchScalars.Add(delta, w.Bias);         // + s·bias, [d_out] broadcast

            if (w.IsDora)
            {
                // Only reachable for a DoRA adapter alone on its sequences: these rows have no other contribution.
                var rowScale = w.DoraRowScale(g.Scale, baseWeight);                  // [d_out] = m / ‖W0 + scale·ΔW‖_row
                var merged = TorchScalars.Add(g.Rows(y).to(w.A.dtype), delta, g.Scale); // [n_g, d_out] = x W0ᵀ + scale·x ΔWᵀ
                g.SetRows(y, merged.mul(rowScale).to(y.dtype));                      // [n_g, d_out] rows rescaled
            }
            else
            {
                if (g.Scale != 1f) delta = TorchScalars.MulInPlace(delta, g.Scale);  // [n_g, d_out]
                g.AddRows(y, delta.dtype == y.dtype ? delta : delta.to(y.dtype));
            }
        }
    }

    public void Complete() { }
}
