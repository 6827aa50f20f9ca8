using System.Text.Json.Nodes;
using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters
{
    /// <summary>The names the Kronecker kinds show in the API and the manifest.</summary>
    public readonly partial record struct AdapterKind
    {
        public static readonly AdapterKind Lokr = new("lokr");
        public static readonly AdapterKind Moka = new("moka");
    }
}

namespace AdapterServe.Adapters.Kinds.Kronecker
{
    /// <summary>
    /// peft_type LOKR (PEFT's LoKr, methods.md §2.3) and MOKA (mixture of Kronecker adapters, §3): static deltas
    /// <c>ΔW = Σ_i c_i · kron(A_i, B_i)</c>, served unmerged and never materialised (<see cref="KroneckerWeights"/>),
    /// mixable with any other static kind in one request.
    /// </summary>
    public sealed class KroneckerKind : IAdapterKindHandler
    {
        public static KroneckerKind Instance { get; } = new();

        private KroneckerKind() { }

        public IReadOnlyList<string> PeftTypes { get; } = [LokrConfig.PeftType, MokaConfig.PeftType];

        public AdapterFiles Files => AdapterFiles.Peft;

        public AdapterDescription Describe(string directory, JsonObject config, ModelConfig baseModel, AdapterValidationOptions options)
        {
            // The config first: a refused field is reported even when the weights are missing too.
            var kind = KroneckerValidator.KindOf(config);
            LokrConfig? lokr = kind == AdapterKind.Lokr ? LokrConfig.Parse(config) : null;
            MokaConfig? moka = kind == AdapterKind.Moka ? MokaConfig.Parse(config) : null;
            if (!File.Exists(Path.Combine(directory, AdapterFiles.WeightsFileName)))
                throw new AdapterValidationException($"{AdapterFiles.WeightsFileName} is missing", "missing_adapter_weights");
            using var file = AdapterValidator.OpenSafetensors(directory, AdapterFiles.WeightsFileName);
            var description = lokr is not null
                ? KroneckerValidator.DescribeLokr(lokr, file.Tensors.Values, baseModel)
                : KroneckerValidator.DescribeMoka(moka!, file.Tensors.Values, baseModel);
            if (options.ScanWeights) AdapterValidator.RefuseNonFinite(directory, AdapterFiles.WeightsFileName, file.Tensors.Values);
            return description;
        }

        public IAdapterModules Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype) =>
            KroneckerModules.Load(record, device, dtype);

        public IAdapterStepExecutor CreateStepExecutor(IReadOnlyList<AdapterTokenGroup> groups) => new KroneckerStepExecutor(groups);
    }
}
