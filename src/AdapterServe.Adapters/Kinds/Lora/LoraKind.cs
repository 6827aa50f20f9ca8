using System.Text.Json.Nodes;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters
{
    /// <summary>The names the LoRA family shows in the API and the manifest.</summary>
    public readonly partial record struct AdapterKind
    {
        public static readonly AdapterKind Lora = new("lora");
        public static readonly AdapterKind Dora = new("dora");
        public static readonly AdapterKind Kasa = new("kasa");
    }
}

namespace AdapterServe.Adapters.Kinds.Lora
{
    /// <summary>
    /// peft_type LORA: LoRA, rsLoRA, DoRA (methods.md §2.1) and KaSA (§2.2), all served as an unmerged low-rank delta
    /// <c>ΔW = B·A</c> per module (DoRA with its row rescaling) from the PEFT layout.
    /// </summary>
    public sealed class LoraKind : IAdapterKindHandler
    {
        public static LoraKind Instance { get; } = new();

        private LoraKind() { }

        public IReadOnlyList<string> PeftTypes { get; } = ["LORA"];

        public AdapterFiles Files => AdapterFiles.Peft;

        public AdapterDescription Describe(string directory, JsonObject config, ModelConfig baseModel, AdapterValidationOptions options) =>
            LoraValidator.Validate(directory, PeftLoraConfig.Parse(config), baseModel, options);

        public IAdapterModules Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype) =>
            LoraModules.Load(record, baseWeights, device, dtype);

        public IAdapterStepExecutor CreateStepExecutor(IReadOnlyList<AdapterTokenGroup> groups) => new LoraStepExecutor(groups);

        /// <summary>
        /// A loaded adapter built from tensors already at hand, keyed like adapter_model.safetensors (tests, tools).
        /// </summary>
        public static LoadedAdapter FromTensors(AdapterRecord record, Func<string, Tensor?> tensor, IBaseWeights baseWeights, Device device, ScalarType dtype) =>
            new(record, device, dtype, LoraModules.FromTensors(record, tensor, baseWeights, device, dtype));
    }

    /// <summary>The LoRA view of a loaded adapter.</summary>
    public static class LoraAdapters
    {
        /// <summary>The LoRA modules of <paramref name="adapter"/>.</summary>
        /// <exception cref="InvalidOperationException">It is not a LoRA-family adapter.</exception>
        public static LoraModules LoraModules(this LoadedAdapter adapter) =>
            adapter.Modules as LoraModules ?? throw new InvalidOperationException($"{adapter} is a '{adapter.Kind}' adapter, not a LoRA one");

        /// <summary>The weights for one projection of one layer, or null when the adapter does not target it.</summary>
        public static LoraWeights? Module(this LoadedAdapter adapter, int layer, Projection projection) => adapter.LoraModules().Module(layer, projection);
    }
}
