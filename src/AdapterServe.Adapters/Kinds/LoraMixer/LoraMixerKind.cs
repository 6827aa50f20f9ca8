using System.Text.Json.Nodes;
using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters
{
    public readonly partial record struct AdapterKind
    {
        public static readonly AdapterKind LoraMixer = new("lora_mixer");
    }
}

namespace AdapterServe.Adapters.Kinds.LoraMixer
{
    /// <summary>A validated LoRA-Mixer. Plain data: no tensors.</summary>
    public sealed record LoraMixerDescription(LoraMixerLayout Layout)
        : AdapterDescription(AdapterKind.LoraMixer, Layout.RouterBytes + Layout.Experts.Where(e => e.Embedded).Sum(e => e.Description.WeightBytes))
    {
        public override IAdapterKindHandler Handler => LoraMixerKind.Instance;
        public override int MaxRank => Layout.Experts.Max(e => e.Description.MaxRank);
        public override IReadOnlyList<string> TargetModules => Layout.Routers.Select(r => r.Projection.ShortName()).Distinct().ToList();
        public override IReadOnlyList<AdapterModuleSummary> ModuleSummaries =>
            Layout.Routers.Select(r => new AdapterModuleSummary(r.Layer, r.Projection, MaxRank, new Dictionary<string, object>
            {
                ["experts"] = string.Join(",", Layout.Config.Experts),
                ["top_k"] = Layout.Config.TopK,
                ["router_bias"] = r.HasBias,
            })).ToList();
        /// <summary>The registered LoRAs this mixer routes to (embedded experts belong to the mixer).</summary>
        public override IReadOnlyList<string> DependsOn => Layout.Experts.Where(e => !e.Embedded).Select(e => e.Name).ToList();
        public override IReadOnlyList<AdapterRecord> Dependencies => Layout.Experts.Select(e => e.Record).OfType<AdapterRecord>().ToList();
        public override IReadOnlyList<string> Experts => Layout.Config.Experts;
        public override int? TopK => Layout.Config.TopK;
    }

    /// <summary>
    /// peft_type LORA_MIXER (methods.md §4.1): a router per module over LoRA experts, top-K, renormalised, served fused.
    /// Files: <c>adapter_config.json</c>, <c>mixer_model.safetensors</c> and embedded experts under <c>experts/*/</c>.
    /// </summary>
    public sealed class LoraMixerKind : IAdapterKindHandler
    {
        public static LoraMixerKind Instance { get; } = new();

        private LoraMixerKind() { }

        public IReadOnlyList<string> PeftTypes { get; } = [LoraMixerConfig.PeftType];

        public AdapterFiles Files { get; } = new(
        [
            new(AdapterFiles.ConfigFileName),
            new(LoraMixerConfig.RouterFileName),
            new($"{LoraMixerConfig.ExpertsFolder}/*/{AdapterFiles.ConfigFileName}", Required: false),
            new($"{LoraMixerConfig.ExpertsFolder}/*/{AdapterFiles.WeightsFileName}", Required: false),
        ]);

        public AdapterDescription Describe(string directory, JsonObject config, ModelConfig baseModel, AdapterValidationOptions options) =>
            new LoraMixerDescription(LoraMixerValidator.Validate(directory, LoraMixerConfig.Parse(MixtureConfigFields.From(config, LoraMixerConfig.FileName)),
                baseModel, options.Registered ?? (_ => null), options));

        public IAdapterModules Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype)
        {
            var description = record.Description as LoraMixerDescription
                ?? throw new ArgumentException($"adapter '{record.Name}' is a '{record.Description.Kind}' adapter, not a LoRA-Mixer", nameof(record));
            var layout = description.Layout;
            var sources = layout.Experts.Select(expert => new MixerExpertSource(expert.Embedded
                ? new AdapterRecord($"{record.Name}/{expert.Name}", record.Version, expert.EmbeddedDirectory(record.Directory), expert.Description, record.ContentHash, record.Source, record.CreatedAt, record.UpdatedAt)
                : expert.Record ?? throw new AdapterValidationException($"adapter '{record.Name}': expert '{expert.Name}' has no stored version", "expert_not_found"),
                Registered: !expert.Embedded)).ToList();
            var experts = new LoraModules?[sources.Count];
            try
            {
                // Each expert's served LoRA weights (scalings folded, KaSA converted) are computed once in float32, when
                // a stack needs them (none when a mixer over the same experts is loaded), and stacked; the per-expert
                // copies are dropped after stacking.
                var weights = MixerWeights.Load(record.Directory, layout, record.Name, sources, (i, layer, projection) =>
                    (experts[i] ??= LoraModules.Load(sources[i].Record, baseWeights, CPU, ScalarType.Float32)).Module(layer, projection) is { } w
                        ? new ExpertDelta(w.A, w.B, w.Bias) : null, device, dtype);
                return new MixerModules(weights);
            }
            finally
            {
                foreach (var m in experts) m?.Dispose();
            }
        }

        public IAdapterStepExecutor CreateStepExecutor(IReadOnlyList<AdapterTokenGroup> groups) =>
            new MixerStepExecutor(groups, ExpertUsage.Shared.JoinStep());
    }

    /// <summary>The loaded tensors of one LoRA-Mixer version.</summary>
    public sealed class MixerModules(MixerWeights weights) : IAdapterModules
    {
        public MixerWeights Weights { get; } = weights;
        public long Bytes => Weights.Bytes;
        public IReadOnlyCollection<SharedStorage> Shared => Weights.Shared;
        public bool Targets(int layer, Projection projection) => Weights.Module(layer, projection) is not null;
        public IAdapterModules To(Device device) => new MixerModules(Weights.To(device));
        public void Dispose() => Weights.Dispose();
    }

    /// <summary>
    /// The LoRA-Mixer's share of one step. Two paths, chosen per group when the step is built: several short groups of
    /// slotted mixers go through <see cref="MixerSlotStep"/> (one fixed sequence of calls per projection for all of
    /// them); the others (a single mixer, prefills, adapters without a slot) each run <see cref="MixerModule.AddDelta"/>
    /// (two GEMMs on the stacked experts whatever E, K or the routing) into their rows in place. The top-K
    /// ids are recorded on the device either way.
    /// </summary>
    internal sealed class MixerStepExecutor(IReadOnlyList<AdapterTokenGroup> groups, ExpertStepTally tally)
        : MixtureStepExecutor<MixerWeights>(groups, tally, m => (m as MixerModules)?.Weights, "a LoRA-Mixer", MixerSlotStep.TryBuild)
    {
        protected override void ApplyGroup(AdapterTokenGroup g, MixerWeights weights, int layer, Projection projection, Tensor x, Tensor y)
        {
            if (weights.Module(layer, projection) is not var (module, site)) return;
            AdapterTokenGroup.EnsureFits(g.Adapter, layer, projection, module.OutFeatures, module.InFeatures, x, y);
            Tensor selected;
            if (g.IsContiguous && y.dtype == module.AAll.dtype)
                module.AddDelta(g.Rows(x), g.RowsView(y), g.Scale, out selected);     // y[rows] += scale · delta, in place
            else g.AddScaledRows(y, module.Delta(g.Rows(x), out selected));           // [n_g, d_out]
            Tally.RecordTopK(site, selected);
        }
    }
}
