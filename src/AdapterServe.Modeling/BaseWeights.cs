using static TorchSharp.torch;

namespace AdapterServe.Modeling;

/// <summary>
/// The frozen base model's projection weights, as the Adapters room reads them: KaSA's SVD and DoRA's row norms are
/// computed from <c>W0</c> when an adapter loads. The engine hands one of these to the room once the model is loaded.
/// Tensors are read-only and owned by the model.
/// </summary>
public interface IBaseWeights
{
    /// <summary><c>W0: [d_out, d_in]</c> of one projection of one layer.</summary>
    Tensor Weight(int layer, Projection projection);
}
