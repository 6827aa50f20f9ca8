using System.Text.Json.Nodes;
using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// peft_type HIER_MOE with moe_arch smore: S'MoRE, the hierarchical mixture of residual experts (methods.md §4.3), in
/// the official fork's PEFT layout. Every token is routed through its own sub-tree of experts inside the forward pass;
/// selections are counted per module under the labels <c>l&lt;level&gt;.&lt;index&gt;</c>.
/// </summary>
public sealed class SmoreKind : IAdapterKindHandler
{
    public static SmoreKind Instance { get; } = new();

    private SmoreKind() { }

    public IReadOnlyList<string> PeftTypes { get; } = [SmoreConfig.PeftType];

    public AdapterFiles Files => AdapterFiles.Peft;

    public AdapterDescription Describe(string directory, JsonObject config, ModelConfig baseModel, AdapterValidationOptions options) =>
        SmoreValidator.Validate(directory, SmoreConfig.Parse(config), baseModel, options.ScanWeights);

    /// <summary>Routing and the tree run in float32 whatever <paramref name="dtype"/> is; the output is cast to the activations' dtype.</summary>
    public IAdapterModules Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype)
    {
        var description = record.Description as SmoreDescription
            ?? throw new ArgumentException($"adapter '{record.Name}' v{record.Version} is a '{record.Description.Kind}' adapter, not an S'MoRE one", nameof(record));
        return SmoreWeights.Load(record.Name, record.Directory, description, device);
    }

    public IAdapterStepExecutor CreateStepExecutor(IReadOnlyList<AdapterTokenGroup> groups) => new SmoreStepExecutor(groups, ExpertUsage.Shared.JoinStep());
}
