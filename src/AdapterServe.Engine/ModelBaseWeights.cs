using AdapterServe.Modeling;
using AdapterServe.Modeling.Llama;
using static TorchSharp.torch;

namespace AdapterServe.Engine;

/// <summary>The loaded model's projection weights, handed to the Adapters room through <see cref="IAdapterBinder.ModelReady"/>.</summary>
internal sealed class ModelBaseWeights(LlamaModel model) : IBaseWeights
{
    public Tensor Weight(int layer, Projection projection) => model.ProjectionOf(layer, projection).Weight;
}
